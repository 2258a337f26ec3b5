"""Does a patch's cluster depend on where the inference window fell? Three figures for any COG.

1. **Crop agreement** (issue 9's protocol): render the scene, render a copy cropped by ``--shift``
   patches (13 = half a window core, 182 px at 0.25 m) in x and y, and compare the cluster IDs of the
   same ground patches (all K clusters, and after grouping into ``--groups`` super-clusters). Windows
   sit on a lattice of the ground, so the crop gets the same windows where it still has the image:
   what is left is the crop's edge, where windows lose the context beyond it.
2. **Window-shift agreement**: the same, but the copy keeps every pixel and is *moved* by ``--shift``
   patches in its georeferencing, so every window falls ``--shift`` patches elsewhere on the content:
   how much a patch's cluster depends on the window placement itself.
3. **Window-line colour ratio**: the mean colour step (CIELAB ΔE of the cluster colours) between
   neighbouring patches across a window line, over the step between neighbours elsewhere, pooled over
   the render and the moved copy's (two placements of the lines). 1.0 means window lines are invisible.

Each is printed for the served method (features blended across the windows that see a patch)
and without blending (each patch from one window only), with the cost: windows encoded per km² for
the whole scene, and windows and latency of cold z18 tiles one at a time (median of ``--tiles``).

    python -m benchmarks.consistency [COG ...] [--shift 13] [--groups 16] [--tiles 5] [--served-only]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from benchmarks.common import demo_bundle, engine, machine, oam_images, open_reader
from dinotiles.core.encoder import NODATA
from dinotiles.core.grid import Grid
from dinotiles.core.groups import _srgb_to_lab
from dinotiles.core.render import scene_ids


def _copy(src: Path, dst: Path, patches: int, move: bool, gsd: float = 0.25, patch_px: int = 14) -> Path:
    """``crop``: the image without its first ``patches`` patch rows and columns. ``move``: every
    pixel, georeferenced ``patches`` patches east and south of where it was."""
    with rasterio.open(src) as ds:
        px = round(patches * patch_px * gsd / abs(ds.transform.a))
        window = Window(0, 0, ds.width, ds.height) if move else Window(px, px, ds.width - px, ds.height - px)
        transform = ds.window_transform(window)
        if move:
            transform = Affine.translation(px * ds.transform.a, px * ds.transform.e) @ transform
        profile = {**ds.profile, "width": window.width, "height": window.height, "transform": transform}
        profile.update(tiled=True, blockxsize=512, blockysize=512, driver="GTiff", compress="deflate")
        profile.pop("photometric", None)
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=window))
    return dst


def on_its_grid(src: Path, dst: Path, gsd: float = 0.25, patch: int = 14, window: int = 448) -> Path:
    """``src`` itself if it is stored in a UTM zone; else a copy warped onto the UTM grid the server
    reads it on (0.25 m, pixels on the patch lattice), so that moving it by whole patches moves it by
    whole patches of the analysis grid too (a move in Web Mercator or a national grid is not one in UTM)."""
    from rasterio.warp import Resampling, reproject

    from dinotiles.core.grid import grid_for, is_utm

    with rasterio.open(src) as ds:
        if is_utm(ds.crs):
            return src
        g = grid_for(ds, gsd, patch, window, 10**9)
        profile = {k: v for k, v in ds.profile.items() if k not in ("photometric", "blockxsize", "blockysize")}
        profile.update(
            crs=g.crs,
            transform=Affine(gsd, 0, g.x0, 0, -gsd, g.y0),
            width=g.cols * patch,
            height=g.rows * patch,
            nodata=0,
            driver="GTiff",
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
        )
        with rasterio.open(dst, "w", **profile) as out:
            for band in range(1, ds.count + 1):
                reproject(rasterio.band(ds, band), rasterio.band(out, band), resampling=Resampling.bilinear)
    return dst


def crop(src: Path, dst: Path, patches: int) -> Path:
    return _copy(src, dst, patches, move=False)


def move(src: Path, dst: Path, patches: int) -> Path:
    return _copy(src, dst, patches, move=True)


def moved_by(src: Path, patches: int, gsd: float = 0.25, patch_px: int = 14) -> tuple[float, float]:
    """How far ``move(src, …, patches)`` moves the content in its CRS (x and y, CRS units)."""
    with rasterio.open(src) as ds:
        px = round(patches * patch_px * gsd / abs(ds.transform.a))
        return px * ds.transform.a, px * ds.transform.e


def render_ids(eng, path: Path) -> tuple[np.ndarray, Grid]:  # type: ignore[no-untyped-def]
    with open_reader(eng, path) as src:
        return scene_ids(eng, src.view, progress=False), src.view.grid


def agreement(
    a: np.ndarray,
    ga: Grid,
    b: np.ndarray,
    gb: Grid,
    moved: tuple[float, float] = (0.0, 0.0),
    labels: np.ndarray | None = None,
    margin: int = 0,
) -> float:
    """Share of content patches (valid in both renders) whose ID is the same in both; ``moved``: how far
    b's georeferencing moved the content (CRS units), so patches are paired by content, not position;
    ``margin``: only patches at least that many patches from any patch b did not render (its edge)."""
    if not math.isclose(ga.cell, gb.cell, rel_tol=1e-9):
        raise ValueError(f"the renders' patches differ in size ({ga.cell} vs {gb.cell}): not comparable")
    dc = round((gb.x0 - moved[0] - ga.x0) / ga.cell)  # b's column 0 is a's column dc
    dr = round((ga.y0 - (gb.y0 - moved[1])) / ga.cell)
    a = a[max(dr, 0) :, max(dc, 0) :]
    b = b[max(-dr, 0) :, max(-dc, 0) :]
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    x, y = a[:h, :w], b[:h, :w]
    valid = (x != NODATA) & (y != NODATA)
    if margin:
        from scipy.ndimage import distance_transform_cdt

        inside = distance_transform_cdt(np.pad(b != NODATA, 1), metric="chessboard")[1:-1, 1:-1]
        valid &= inside[:h, :w] > margin
    if not valid.any():
        return float("nan")
    if labels is not None:
        return float((labels[x[valid]] == labels[y[valid]]).mean())
    return float((x[valid] == y[valid]).mean())


def window_line_ratio(ids: np.ndarray, core: int, colors: np.ndarray, *more: np.ndarray) -> float:
    """Mean ΔE between neighbours across window lines / mean ΔE between neighbours elsewhere, pooled
    over ``ids`` and any ``more`` renders (the same image with its windows placed elsewhere): on a
    small image a few lines decide it, and where they fall matters as much as how they are made."""
    lab = np.zeros((NODATA + 1, 3))
    lab[: len(colors)] = _srgb_to_lab(colors)
    across, inside = [], []
    for render in (ids, *more):
        for axis in (0, 1):
            a = render if axis == 1 else render.T
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
    windows: list[int] = []
    seconds: list[float] = []
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
    parser.add_argument("--served-only", action="store_true", help="only the served (blended) method")
    args = parser.parse_args()
    from dinotiles.core.encoder import Encoder

    encoder = Encoder.for_bundle(bundle := demo_bundle())
    images = args.images or oam_images()
    labels = bundle.codebook.groups(args.groups)
    print(f"machine: {machine()}; K={bundle.codebook.k}, window {bundle.window} px, shift {args.shift} patches")
    for original in images:
        for blend in (True,) if args.served_only else (True, False):
            eng = engine(bundle, blend=blend, encoder=encoder)
            start = time.perf_counter()
            figures = {}
            with tempfile.TemporaryDirectory() as tmp:
                image = on_its_grid(original, Path(tmp) / "on-its-grid.tif")
                a, ga = render_ids(eng, image)
                placed = []
                for name, make in (("crop", crop), ("window shift", move)):
                    copy = make(image, Path(tmp) / f"{name}.tif", args.shift)
                    b, gb = render_ids(engine(bundle, blend=blend, encoder=encoder), copy)
                    if make is move:
                        placed.append(b)
                    moved = moved_by(image, args.shift) if make is move else (0.0, 0.0)
                    figures[name] = (agreement(a, ga, b, gb, moved), agreement(a, ga, b, gb, moved, labels))
                    if make is crop:  # the crop's edge loses context whatever the windows: the rest apart
                        figures["crop, one window in from its edge"] = (
                            agreement(a, ga, b, gb, moved, margin=ga.grid),
                            agreement(a, ga, b, gb, moved, labels, margin=ga.grid),
                        )
            elapsed = time.perf_counter() - start
            ratio = window_line_ratio(a, ga.core, bundle.codebook.colors, *placed)
            km2 = (a != NODATA).sum() * (bundle.patch * bundle.gsd) ** 2 / 1e6
            cold = ""
            if args.tiles:
                windows, seconds = cold_tiles(bundle, encoder, original, blend, args.tiles)
                cold = f"; cold z18 tile: {windows:.0f} windows, {seconds:.1f} s (median of {args.tiles})"
            agree = "; ".join(
                f"{name} agreement {k * 100:.1f} % (K={bundle.codebook.k}), {g * 100:.1f} % ({args.groups} groups)"
                if k == k
                else f"{name}: no such patches (the image is too small)"
                for name, (k, g) in figures.items()
            )
            print(
                f"{image.name} {'blended' if blend else 'one window'}: {agree}; window-line colour ratio "
                f"{ratio:.2f}; {eng.windows_encoded / km2:.0f} windows/km²; {elapsed:.0f} s for three renders{cold}",
                flush=True,
            )


if __name__ == "__main__":
    main()
