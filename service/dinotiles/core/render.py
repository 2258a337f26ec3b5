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
    """All patches of the source, block row by block row, through the engine's caches."""
    return band_ids(engine, view, 0, view.grid.window_rows, progress)


def band_ids(engine: ClusterEngine, view: SourceView, i0: int, i1: int, progress: bool = False) -> np.ndarray:
    """Patch rows [i0 × core, i1 × core) of the source (clipped to it), block row by block row.

    Each window is encoded once: the features of the window rows the next block row still needs
    (its own and the ones above and below) are held here, not left to the feature cache's size.
    A band of B rows encodes B + 2 window rows when blending (its neighbours' bands share two).
    """
    grid = view.grid
    core = grid.core
    top, bottom = i0 * core, min(grid.rows, i1 * core)
    out = np.full((bottom - top, grid.cols), NODATA, np.uint16)
    held: dict[tuple[int, int], np.ndarray] = {}
    for i in tqdm(range(i0, i1), desc="rendering", unit="row", disable=not progress):
        blocks = engine.block_ids(view, [(i, j) for j in range(grid.window_cols)], held)
        for (_, j), ids in blocks.items():
            part = ids[: grid.rows - i * core, : grid.cols - j * core]
            r = i * core - top
            out[r : r + part.shape[0], j * core : j * core + part.shape[1]] = part
        for ij in [ij for ij in held if ij[0] < i]:  # row i - 1 is no block's neighbour any more
            del held[ij]
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
