"""Experiment: blend patch features across overlapping windows before assignment (issue 9, part 1).

For each variant (window stride in patches, taper), every patch's feature is the weighted mean of
the features of all windows that hold it (weight: a window-shaped taper, so a patch near a window's
edge, which sees little context on one side, counts little), then it goes to the nearest centroid.
Printed per variant: shift agreement (K and 16 groups), window-line colour ratio, windows/km² and
seconds, against the served method (stride = core, no blending) on the same image.

    python -m benchmarks.blending [COG] [--strides 26,22,16,13]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import demo_bundle, engine, machine, open_reader
from benchmarks.consistency import agreement, move, moved_by, on_its_grid, render_ids, window_line_ratio
from dinotiles.core.encoder import NODATA, Encoder
from dinotiles.core.grid import Grid, patch_validity


def read_at(view, r0: int, c0: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The window whose top-left patch is (r0, c0) (may lie partly outside): pixels and patch validity."""
    g = view.grid
    left, top = g.x0 + c0 * g.cell, g.y0 - r0 * g.cell
    img = view.reader.part(
        (left, top - g.grid * g.cell, left + g.grid * g.cell, top),
        dst_crs=g.crs,
        bounds_crs=g.crs,
        indexes=list(view.plan.indexes),
        width=g.window,
        height=g.window,
        max_size=None,
        resampling_method="bilinear",
        reproject_method="bilinear",
    )
    data = view.plan.to_uint8(np.asarray(img.array.data))
    mask = np.asarray(~np.ma.getmaskarray(img.array).any(axis=0), dtype=bool)
    data = np.where(mask[None], data, 0).astype(np.uint8)
    return data, patch_validity(data, mask, g.patch)


def taper(n: int, kind: str) -> np.ndarray:
    p = (np.arange(n) + 0.5) / n
    if kind == "hann":
        w = np.sin(np.pi * p) ** 2
    elif kind == "flat":
        w = np.ones(n)
    else:
        raise ValueError(kind)
    return np.outer(w, w)


def blended_ids(view, encoder: Encoder, stride: int, kind: str, border: int = 3) -> tuple[np.ndarray, int]:  # type: ignore[no-untyped-def]
    g = view.grid
    n = g.grid
    acc = np.zeros((g.rows, g.cols, 0), np.float32)
    weight = np.zeros((g.rows, g.cols), np.float32)
    w = taper(n, kind).astype(np.float32)
    windows = 0
    starts_r = range(-border, g.rows - border, stride)
    starts_c = range(-border, g.cols - border, stride)
    for r0 in starts_r:
        batch, spots = [], []
        for c0 in starts_c:
            img, valid = read_at(view, r0, c0)
            if valid.mean() < 0.02:
                continue
            batch.append(img)
            spots.append((c0, valid))
        for k in range(0, len(batch), 4):
            feats, _ = encoder.features(np.stack(batch[k : k + 4]))
            windows += len(feats)
            for f, (c0, valid) in zip(feats, spots[k : k + 4], strict=True):
                if acc.shape[2] == 0:
                    acc = np.zeros((g.rows, g.cols, f.shape[-1]), np.float32)
                rr = slice(max(0, r0), min(g.rows, r0 + n))
                cc = slice(max(0, c0), min(g.cols, c0 + n))
                fr = slice(rr.start - r0, rr.stop - r0)
                fc = slice(cc.start - c0, cc.stop - c0)
                ww = w[fr, fc] * valid[fr, fc]
                acc[rr, cc] += f[fr, fc] * ww[..., None]
                weight[rr, cc] += ww
    ids = np.full((g.rows, g.cols), NODATA, np.uint16)
    ok = weight > 0
    ids[ok] = encoder.assign(acc[ok] / weight[ok][:, None])
    return ids, windows


def run(bundle, path: Path, stride: int, kind: str) -> tuple[np.ndarray, Grid, int, float]:  # type: ignore[no-untyped-def]
    eng = engine(bundle, 0)
    enc = Encoder.for_bundle(bundle)
    start = time.perf_counter()
    with open_reader(eng, path) as src:
        ids, windows = blended_ids(src.view, enc, stride, kind)
        grid = src.view.grid
    return ids, grid, windows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--strides", default="26,22,16,13")
    parser.add_argument("--tapers", default="hann")
    parser.add_argument("--shift", type=int, default=13)
    args = parser.parse_args()
    bundle = demo_bundle()
    image = args.image or Path(".dinotiles/data/test_tiled.tif")
    labels = bundle.codebook.groups(16)
    print(f"machine: {machine()}; image {image.name}; shift {args.shift} patches")
    with tempfile.TemporaryDirectory() as tmp:
        image = on_its_grid(image, Path(tmp) / "on-its-grid.tif")  # so a move is whole patches of its grid
        shifted = move(image, Path(tmp) / "shifted.tif", args.shift)
        moved = moved_by(image, args.shift)
        start = time.perf_counter()
        eng = engine(bundle, blend=False)
        a, ga = render_ids(eng, image)
        core = ga.core
        base_windows, base_s = eng.windows_encoded, time.perf_counter() - start
        b, gb = render_ids(engine(bundle, blend=False), shifted)
        area = (a != NODATA).sum()
        print(
            f"one window per patch (stride {core}): window-shift agreement "
            f"{agreement(a, ga, b, gb, moved) * 100:.1f} % / {agreement(a, ga, b, gb, moved, labels) * 100:.1f} % "
            f"(16 groups); ratio {window_line_ratio(a, core, bundle.codebook.colors):.2f}; {base_windows} windows; "
            f"{base_s:.0f} s"
        )
        for kind in args.tapers.split(","):
            for stride in map(int, args.strides.split(",")):
                a, ga, windows, seconds = run(bundle, image, stride, kind)
                b, gb, _, _ = run(bundle, shifted, stride, kind)
                agree, grouped = agreement(a, ga, b, gb, moved), agreement(a, ga, b, gb, moved, labels)
                print(
                    f"stride {stride:2d}, {kind}: window-shift agreement {agree * 100:.1f} % / "
                    f"{grouped * 100:.1f} % (16 groups); ratio "
                    f"{window_line_ratio(a, core, bundle.codebook.colors):.2f}; {windows} windows "
                    f"({windows / base_windows:.1f}x, {(a != NODATA).sum() / max(area, 1):.2f} of the area); "
                    f"{seconds:.0f} s"
                )


if __name__ == "__main__":
    main()
