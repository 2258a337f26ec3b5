"""Does a patch's cluster depend on where the inference window fell? Two figures for any COG.

1. **Shift agreement**: render the scene, render a copy cropped by ``--shift`` patches (13 = half a
   window core, 182 px at 0.25 m) in x and y, and compare the cluster IDs of the same ground patches
   (all K clusters, and after grouping into ``--groups`` super-clusters).
2. **Window-line colour ratio**: the mean colour step (CIELAB ΔE of the cluster colours) between
   neighbouring patches across a window line, over the step between neighbours elsewhere. 1.0 means
   window lines are invisible.

Each is printed for the served method (features blended across the windows that see a patch)
and without blending (each patch from one window only), with the cost: windows encoded per km² for
the whole scene, and windows and latency of cold z18 tiles one at a time (median of ``--tiles``).

    python -m benchmarks.consistency [COG ...] [--shift 13] [--groups 16] [--tiles 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from benchmarks.common import demo_bundle, engine, machine, oam_images, open_reader
from dinotiles.core.encoder import NODATA
from dinotiles.core.groups import _srgb_to_lab
from dinotiles.core.render import scene_ids


def crop(src: Path, dst: Path, patches: int, gsd: float = 0.25, patch_px: int = 14) -> Path:
    """The image without its first ``patches`` patch rows and columns (in source pixels)."""
    with rasterio.open(src) as ds:
        px = round(patches * patch_px * gsd / abs(ds.transform.a))
        window = Window(px, px, ds.width - px, ds.height - px)
        profile = {**ds.profile, "width": window.width, "height": window.height}
        profile.update(transform=ds.window_transform(window), tiled=True, blockxsize=512, blockysize=512)
        profile.update(driver="GTiff", compress="deflate")
        profile.pop("photometric", None)
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=window))
    return dst


def render_ids(eng, path: Path) -> tuple[np.ndarray, int]:  # type: ignore[no-untyped-def]
    with open_reader(eng, path) as src:
        return scene_ids(eng, src.view, progress=False), src.view.grid.core


def shift_agreement(a: np.ndarray, b: np.ndarray, shift: int, labels: np.ndarray | None = None) -> float:
    """Share of ground patches (valid in both) whose ID is the same in both renders."""
    h, w = min(a.shape[0] - shift, b.shape[0]), min(a.shape[1] - shift, b.shape[1])
    x, y = a[shift : shift + h, shift : shift + w], b[:h, :w]
    valid = (x != NODATA) & (y != NODATA)
    if labels is not None:
        x, y = labels[x[valid]], labels[y[valid]]
        return float((x == y).mean())
    return float((x[valid] == y[valid]).mean())


def window_line_ratio(ids: np.ndarray, core: int, colors: np.ndarray) -> float:
    """Mean ΔE between neighbours across window lines / mean ΔE between neighbours elsewhere."""
    lab = np.zeros((NODATA + 1, 3))
    lab[: len(colors)] = _srgb_to_lab(colors)
    across, inside = [], []
    for axis in (0, 1):
        a = ids if axis == 1 else ids.T
        left, right = a[:, :-1], a[:, 1:]
        valid = (left != NODATA) & (right != NODATA)
        step = np.linalg.norm(lab[left] - lab[right], axis=-1)
        line = np.zeros(left.shape[1], bool)
        line[core - 1 :: core] = True  # between column k*core-1 and k*core
        across.append(step[:, line][valid[:, line]])
        inside.append(step[:, ~line][valid[:, ~line]])
    return float(np.concatenate(across).mean() / np.concatenate(inside).mean())


def cold_tiles(bundle, encoder, path: Path, blend: bool, n: int, z: int = 18) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median windows encoded and seconds for the ``n`` z-``z`` tiles nearest the centre that hold
    some image, each from empty caches."""
    from rio_tiler.errors import TileOutsideBounds

    from benchmarks.common import TMS

    with open_reader(engine(bundle, blend=blend, encoder=encoder), path) as probe:
        w, s, e, n_ = probe.geographic_bounds()
    centre = TMS.tile((w + e) / 2, (s + n_) / 2, z)
    near = sorted(((dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)), key=lambda d: d[0] ** 2 + d[1] ** 2)
    windows, seconds = [], []
    for dx, dy in near:
        if len(seconds) == n:
            break
        eng = engine(bundle, blend=blend, encoder=encoder)
        with open_reader(eng, path) as src:
            start = time.perf_counter()
            try:
                src.tile(centre.x + dx, centre.y + dy, z)
            except TileOutsideBounds:
                continue
            seconds.append(time.perf_counter() - start)
        windows.append(eng.windows_encoded)
    return float(np.median(windows)), float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="COGs at 0.25 m (default: the two OAM scenes)")
    parser.add_argument("--shift", type=int, default=13)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--tiles", type=int, default=5, help="cold z18 tiles timed per variant (0: none)")
    args = parser.parse_args()
    from dinotiles.core.encoder import Encoder

    encoder = Encoder.for_bundle(bundle := demo_bundle())
    images = args.images or oam_images()
    labels = bundle.codebook.groups(args.groups)
    print(f"machine: {machine()}; K={bundle.codebook.k}, window {bundle.window} px, shift {args.shift} patches")
    for image in images:
        for blend in (True, False):
            eng = engine(bundle, blend=blend, encoder=encoder)
            start = time.perf_counter()
            a, core = render_ids(eng, image)
            with tempfile.TemporaryDirectory() as tmp:
                shifted = crop(image, Path(tmp) / "shifted.tif", args.shift)
                b, _ = render_ids(engine(bundle, blend=blend, encoder=encoder), shifted)
            elapsed = time.perf_counter() - start
            agree = shift_agreement(a, b, args.shift)
            grouped = shift_agreement(a, b, args.shift, labels)
            ratio = window_line_ratio(a, core, bundle.codebook.colors)
            km2 = (a != NODATA).sum() * (bundle.patch * bundle.gsd) ** 2 / 1e6
            cold = ""
            if args.tiles:
                windows, seconds = cold_tiles(bundle, encoder, image, blend, args.tiles)
                cold = f"; cold z18 tile: {windows:.0f} windows, {seconds:.1f} s (median of {args.tiles})"
            print(
                f"{image.name} {'blended' if blend else 'one window'}: shift agreement {agree * 100:.1f} % "
                f"(K={bundle.codebook.k}), {grouped * 100:.1f} % ({args.groups} groups); window-line colour "
                f"ratio {ratio:.2f}; {eng.windows_encoded / km2:.0f} windows/km²; {elapsed:.0f} s for both "
                f"renders{cold}",
                flush=True,
            )


if __name__ == "__main__":
    main()
