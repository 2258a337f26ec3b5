"""Windows sit on a lattice of the ground, so files of the same place get the same windows.

A crop of a scene, a re-tiled copy or the next item of one orthomosaic must put its windows where
the whole scene puts them; otherwise the same ground patch is encoded in another context and may
change cluster (issue 9: 59 % agreement when windows followed the file's corner).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from rasterio.io import MemoryFile

from dinotiles.core.grid import Grid, grid_for

GSD, PATCH, WINDOW = 0.25, 14, 448
MAX_PATCHES = 10_000_000


def _grid(crs: str, left: float, top: float, res: float, size: tuple[int, int]) -> Grid:
    profile = {
        "driver": "GTiff",
        "width": size[1],
        "height": size[0],
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": Affine(res, 0, left, 0, -res, top),
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(np.zeros((3, *size), np.uint8))
        with mem.open() as ds:
            return grid_for(ds, GSD, PATCH, WINDOW, MAX_PATCHES)


def _windows(g: Grid) -> set[tuple[float, ...]]:
    return {
        tuple(round(v, 6) for v in g.window_bounds(i, j)) for i in range(g.window_rows) for j in range(g.window_cols)
    }


# UTM at 0.25 m, and Web Mercator at Montevideo's latitude (a pixel of 0.305 CRS units there)
CASES = {
    "utm": ("EPSG:32721", 574_321.37, 6_139_877.11, 0.25),
    "web-mercator": ("EPSG:3857", -6_256_789.4, -4_148_321.7, 0.3),
}


@pytest.mark.parametrize("name", CASES)
def test_a_crop_gets_the_windows_of_the_whole_scene(name: str) -> None:
    crs, left, top, res = CASES[name]
    whole = _grid(crs, left, top, res, (3000, 4000))
    for rows, cols in ((182, 182), (7, 1001), (1500, 13)):  # half a core, odd pixels, far in
        part = _grid(crs, left + cols * res, top - rows * res, res, (1000, 1200))
        assert part.pixel == whole.pixel  # the same patch size, to the bit
        assert _windows(part) <= _windows(whole), (rows, cols)
    step = whole.cell * whole.core
    for origin in (whole.x0 / step, whole.y0 / step):
        assert math.isclose(origin, round(origin), abs_tol=1e-6)  # on the lattice of the CRS
    # the grid covers the whole image, and not more than one window core beyond it; what is advertised
    # (TileJSON bounds, STAC bbox, the centre zooms are measured at) is the image, not the grid
    gl, gb, gr, gt = whole.bounds()
    dl, db, dr, dt = whole.data_bounds()
    assert gl <= dl < gl + step and gt >= dt > gt - step and gr >= dr and gb <= db
    if name == "utm":
        assert np.allclose(whole.data_bounds(), (left, top - 3000 * res, left + 4000 * res, top))


def test_any_crs_is_read_onto_the_utm_lattice_of_its_place() -> None:
    """Web Mercator, geographic and national-grid files of one place get the UTM zone's grid (pixel
    exactly 0.25 m) and its windows; a UTM file keeps its own CRS (no warping)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    lon, lat = -56.15, -34.88  # Montevideo: UTM 21S
    grids = {}
    national = "+proj=tmerc +lat_0=0 +lon_0=-55.8 +k=1 +x_0=500000 +y_0=10000000 +ellps=WGS84 +units=m"
    for crs, res in (("EPSG:3857", 0.3), ("EPSG:4326", 3e-6), (national, 0.25), ("EPSG:32721", 0.25)):
        (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
        grids[crs] = _grid(crs, x, y, res, (1000, 1000))
    for crs, g in grids.items():
        assert g.crs == CRS.from_epsg(32721), crs
        assert g.pixel == GSD, crs
        step = g.cell * g.core
        assert all(math.isclose(v / step, round(v / step), abs_tol=1e-6) for v in (g.x0, g.y0)), crs
    # the same window lattice: a window of one is a window of every other where they overlap
    every = set.intersection(*(_windows(g) for g in grids.values()))
    assert every and all(len(every) >= len(_windows(g)) / 4 for g in grids.values())
