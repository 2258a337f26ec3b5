"""`dinotiles batch` against plain `render`, in one run on the same sources: what Ray costs and buys.

Prints patches/s for: `render` of each source one after the other (one process); `batch` with 1 Ray
worker; `batch` with 2 Ray workers (each run into a fresh output folder, Ray start-up included).

    python -m benchmarks.batch [COG ...]      (default: the two OAM scenes)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import demo_bundle, machine, oam_images
from dinotiles.cli import main as cli


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(argv)
    if code:
        raise SystemExit(f"dinotiles {' '.join(argv)} exited {code}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path)
    args = parser.parse_args()
    bundle = demo_bundle()
    os.environ.setdefault("DINOTILES_BUNDLE", str(bundle.root))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    images = args.images or oam_images()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        render = sum(timed(["render", str(p), str(out / f"r{k}.tif")]) for k, p in enumerate(images))
        patches = 0
        import rasterio

        for k in range(len(images)):
            with rasterio.open(out / f"r{k}_ids.tif") as ds:
                patches += int((ds.read(1) != 65535).sum())
        one = timed(["batch", *map(str, images), "--out", str(out / "one"), "--workers", "1"])
        two = timed(["batch", *map(str, images), "--out", str(out / "two"), "--workers", "2"])
    print(f"machine: {machine()}; {len(images)} sources, {patches} patches")
    print(f"render, one after the other: {patches / render:8.0f} patches/s ({render:.1f} s)")
    print(f"batch, 1 Ray worker:         {patches / one:8.0f} patches/s ({one:.1f} s, {render / one:.2f}x render)")
    print(f"batch, 2 Ray workers:        {patches / two:8.0f} patches/s ({two:.1f} s, {render / two:.2f}x render)")


if __name__ == "__main__":
    main()
