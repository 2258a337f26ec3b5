"""Whole-scene product: one pixel per patch, RGB and uint16 IDs, as COGs with overviews."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy
from tqdm import tqdm

from dinotiles.core.colors import colorize
from dinotiles.core.encoder import NODATA
from dinotiles.core.engine import ClusterEngine, SourceView


def scene_ids(engine: ClusterEngine, view: SourceView, progress: bool = True) -> np.ndarray:
    """All patches of the source, window row by window row, through the engine's cache."""
    grid = view.grid
    out = np.full((grid.rows, grid.cols), NODATA, np.uint16)
    step = grid.core
    for r0 in tqdm(range(0, grid.rows, step), desc="rendering", unit="row", disable=not progress):
        r1 = min(grid.rows, r0 + step)
        out[r0:r1] = engine.mosaic(view, r0, r1, 0, grid.cols)
    return out


def write_cog(path: Path, data: np.ndarray, view: SourceView, nodata: int | None, resampling: str = "nearest") -> None:
    """A COG of one pixel per patch; overviews by ``resampling`` (``mode`` keeps IDs real IDs)."""
    grid = view.grid
    profile = {
        "driver": "GTiff",
        "width": data.shape[-1],
        "height": data.shape[-2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": grid.crs,
        "transform": grid.patch_transform(),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.tif"
        with rasterio.open(raw, "w", **profile) as dst:
            dst.write(data)
            if data.shape[0] == 4:
                dst.colorinterp = [rasterio.enums.ColorInterp[c] for c in ("red", "green", "blue", "alpha")]
        # overviews are made while a level is larger than a block: small scenes get small blocks
        block = 256 if max(data.shape[-2:]) > 1024 else 64
        rio_copy(raw, path, driver="COG", compress="deflate", overview_resampling=resampling, blocksize=block)


def render_scene(engine: ClusterEngine, view: SourceView, out: Path, progress: bool = True) -> Path:
    """Write OUT (RGBA colours) and OUT with `_ids` (uint16 cluster IDs, 65535 = no data)."""
    ids = scene_ids(engine, view, progress)
    rgb, alpha = colorize(ids[None], engine.bundle.codebook.colors)
    write_cog(out, np.concatenate([rgb, alpha[None]]), view, None)
    ids_path = out.with_name(out.stem + "_ids" + out.suffix)
    write_cog(ids_path, ids[None], view, NODATA, resampling="mode")
    return ids_path
