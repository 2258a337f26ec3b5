"""Does a STAC item's scene vector depend on which of its windows were sampled? (issue 11, part 3)

An item's scene vector is the mean over ``n`` of its windows (`dinotiles.stac.summary.item_feature`:
CLS, mean patch token, or both). This encodes *every* window of each image once, then draws ``n``
of them at random ``--draws`` times per ``n`` and prints how far a draw's vector lies from the all-window vector (cosine
distance), against how far the images' all-window vectors lie from one another. A draw that
wanders as far as another image lies would put the same scene in another cluster. Draws are of
usable windows (image in them), as the server draws them (``SCENE_WINDOWS`` of them), and the q-th
window of a draw is turned by q quarter turns, as the server turns it; the all-window vector is the
mean over every window at all four turns (``--turns 1``: as read, no turning, 4× faster).

    python -m benchmarks.scene_vectors [COG ...] [--sizes 4,8,16] [--draws 50] [--feature both] [--turns 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.common import demo_bundle, engine, machine, oam_images, open_reader
from dinotiles.core.bundle import Bundle
from dinotiles.core.encoder import Encoder
from dinotiles.core.grid import BORDER, read_window
from dinotiles.scenes.cluster import ROTATIONS, rotated, scene_vector
from dinotiles.stac.summary import MIN_VALID, SCENE_WINDOWS


def all_window_vectors(
    path: Path, bundle: Bundle, encoder: Encoder, feature: str, turns: int = ROTATIONS
) -> tuple[np.ndarray, list[tuple[int, int]], int]:
    """[turns, windows, D]: each usable window's scene vector at each quarter turn, its (i, j), and the
    image's window count."""
    with open_reader(engine(bundle, encoder=encoder), path) as src:
        view = src.view
        g = view.grid
        core = slice(BORDER, BORDER + g.core)
        vectors, where = [], []
        windows = [(i, j) for i in range(g.window_rows) for j in range(g.window_cols)]
        for i, j in tqdm(windows, desc=path.name, unit="window"):
            win = read_window(view.reader, view.plan, g, i, j)
            if win.valid[core, core].mean() < MIN_VALID:
                continue
            per_turn = []
            for k in range(turns):
                patches, cls = encoder.features(rotated(win.image, k)[None])
                valid = rotated(win.valid, k)[core, core]
                mean_patch = patches[0][core, core][valid].mean(axis=0, keepdims=True)[:, None, None, :]
                per_turn.append(scene_vector(mean_patch, cls[:1], feature)[0])
            vectors.append(np.stack(per_turn))
            where.append((i, j))
        return np.stack(vectors, axis=1), where, len(windows)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="COGs (default: the two OAM scenes and the demo image)")
    parser.add_argument("--sizes", default=f"4,8,{SCENE_WINDOWS}")
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--feature", default="cls", choices=("cls", "mean", "both"))
    parser.add_argument("--turns", type=int, default=ROTATIONS, choices=(1, 2, 3, 4), help="quarter turns per window")
    args = parser.parse_args()
    bundle = demo_bundle()
    encoder = Encoder.for_bundle(bundle)
    images = args.images or [*oam_images(), Path(".dinotiles/data/test_tiled.tif")]
    print(f"machine: {machine()}; feature {args.feature}; {args.turns} turns; {args.draws} draws per sample size")
    start = time.perf_counter()
    found = {p.name: all_window_vectors(p, bundle, encoder, args.feature, args.turns) for p in images}
    full = {name: v.mean(axis=(0, 1)) for name, (v, _, _) in found.items()}
    names = list(full)
    between = [_cos(full[a], full[b]) for k, a in enumerate(names) for b in names[k + 1 :]]
    print(f"encoded every window in {time.perf_counter() - start:.0f} s")
    print(f"distance between images' all-window vectors: min {min(between):.4f}, median {np.median(between):.4f}")
    rng = np.random.default_rng(0)
    for name, (vectors, _, total) in found.items():
        usable = vectors.shape[1]
        for n in map(int, args.sizes.split(",")):
            if n >= usable:
                continue
            turn = np.arange(n) % args.turns  # the q-th window drawn is turned q times, as item_feature does
            random = [
                _cos(vectors[turn, rng.choice(usable, n, replace=False)].mean(axis=0), full[name])
                for _ in range(args.draws)
            ]
            print(
                f"{name}: {usable} usable windows of {total}; n={n}: random draws median "
                f"{np.median(random):.4f}, 95th pct {np.percentile(random, 95):.4f} (of the nearest other image: "
                f"{np.percentile(random, 95) / min(between):.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
