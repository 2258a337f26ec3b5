"""The 0.25 m analysis grid of a source, its overlapping inference windows, and reading them.

Windows are anchored to the ground, never to a tile or to the file: every source is analysed in a
UTM grid (its own if it has one, else the zone of its centre) whose window cores sit on a lattice
(multiples of one core from the CRS origin). The patch at a place on the ground therefore always
comes from the same window, whichever tile, zoom or TMS asks (tiles are seamless), and whichever
file holds it: a crop, a re-tiled or reprojected copy, or the next item of the same orthomosaic gets
the same windows, hence the same clusters, where they overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as PCRS
from pyproj import Geod, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS
from rasterio.warp import transform, transform_bounds
from rio_tiler.io import Reader

from dinotiles.core.limits import RequestTooLarge
from dinotiles.core.sources import BandPlan, SourceUnreadable

BORDER = 3  # patches dropped on each side of a window (the seed's choice)
SCALE_TOLERANCE = 0.01  # grid units within 1 % of ground metres are taken as metres
FLAT_STD = 1.0  # a patch whose pixels vary less than this (0-255) is fill, not land
MIN_VALID_SHARE = 0.5  # a patch needs half its pixels valid


UPS_NORTH, UPS_SOUTH = 32661, 32761  # polar stereographic (UPS): where UTM zones stop (84° N, 80° S)


def _metric_crs_for(lon: float, lat: float) -> CRS:
    """The UTM zone of (lon, lat), or the polar UPS grid beyond UTM's latitudes."""
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    if info:
        return CRS.from_epsg(int(info[0].code))
    return CRS.from_epsg(UPS_NORTH if lat > 0 else UPS_SOUTH)


def ground_scale(crs: CRS, x: float, y: float, step: float) -> float:
    """Ground metres per CRS unit at (x, y), measured geodesically along x."""
    to_geo = Transformer.from_crs(PCRS.from_wkt(crs.to_wkt()), "EPSG:4326", always_xy=True)
    (lon0, lon1), (lat0, lat1) = to_geo.transform([x, x + step], [y, y])
    _, _, dist = Geod(ellps="WGS84").inv(lon0, lat0, lon1, lat1)
    return float(dist / step)


def zoom_for_gsd(tms: Any, crs: CRS, x: float, y: float, gsd: float) -> int:
    """The TMS zoom whose pixels are closest to ``gsd`` ground metres at (x, y) of ``crs``: deeper only magnifies."""
    bounds = tms.xy_bbox
    xs, ys = transform(crs, tms.rasterio_crs, [x], [y])
    scale = ground_scale(tms.rasterio_crs, xs[0], ys[0], step=(bounds.right - bounds.left) / 1e6)
    return int(tms.zoom_for_res(gsd / scale))


@dataclass(frozen=True)
class Grid:
    """Patch grid of one source at the bundle's GSD, on a UTM grid: the source's own CRS if that is a UTM zone,
    else the UTM (or UPS) zone of its centre; window cores on the ground lattice (multiples of one core)."""

    crs: CRS
    x0: float
    y0: float
    pixel: float  # CRS units per analysis pixel
    patch: int  # pixels per patch side
    window: int  # pixels per window side
    rows: int  # patches
    cols: int
    extent: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # the image's own bounds, grid CRS

    @property
    def grid(self) -> int:
        return self.window // self.patch

    @property
    def core(self) -> int:
        """Patches kept per window side."""
        return self.grid - 2 * BORDER

    @property
    def cell(self) -> float:
        """Patch size in CRS units."""
        return self.pixel * self.patch

    @property
    def window_rows(self) -> int:
        return math.ceil(self.rows / self.core)

    @property
    def window_cols(self) -> int:
        return math.ceil(self.cols / self.core)

    def patch_transform(self, row0: int = 0, col0: int = 0) -> Affine:
        return Affine(self.cell, 0, self.x0 + col0 * self.cell, 0, -self.cell, self.y0 - row0 * self.cell)

    def window_bounds(self, i: int, j: int) -> tuple[float, float, float, float]:
        """Bounds of window (i, j) including its discarded border."""
        r0 = i * self.core - BORDER
        c0 = j * self.core - BORDER
        left = self.x0 + c0 * self.cell
        top = self.y0 - r0 * self.cell
        return (left, top - self.grid * self.cell, left + self.grid * self.cell, top)

    def patch_range(self, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
        """Patches (row0, row1, col0, col1), half-open and clipped, touching ``bounds`` in grid CRS."""
        left, bottom, right, top = bounds
        c0 = max(0, math.floor((left - self.x0) / self.cell))
        c1 = min(self.cols, math.ceil((right - self.x0) / self.cell))
        r0 = max(0, math.floor((self.y0 - top) / self.cell))
        r1 = min(self.rows, math.ceil((self.y0 - bottom) / self.cell))
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1

    def windows_for(self, r0: int, r1: int, c0: int, c1: int) -> Iterator[tuple[int, int]]:
        for i in range(r0 // self.core, (r1 - 1) // self.core + 1):
            for j in range(c0 // self.core, (c1 - 1) // self.core + 1):
                yield i, j

    def patch_at(self, x: float, y: float) -> tuple[int, int] | None:
        col = math.floor((x - self.x0) / self.cell)
        row = math.floor((self.y0 - y) / self.cell)
        if 0 <= row < self.rows and 0 <= col < self.cols:
            return row, col
        return None

    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - self.rows * self.cell, self.x0 + self.cols * self.cell, self.y0)

    def data_bounds(self) -> tuple[float, float, float, float]:
        """What has clusters: the image's extent (the grid reaches up to a window core beyond it, to
        sit on the lattice), or the grid's bounds if the extent was not given."""
        return self.extent if self.extent[2] > self.extent[0] else self.bounds()

    def centre(self) -> tuple[float, float]:
        left, bottom, right, top = self.data_bounds()
        return (left + right) / 2, (bottom + top) / 2


def _scale_at_centre(crs: CRS, bounds: tuple[float, float, float, float], min_step: float) -> float:
    """Ground metres per CRS unit at the centre of ``bounds``; a CRS where that cannot be measured is
    unreadable (400), never a 500."""
    left, bottom, right, top = bounds
    try:
        scale = ground_scale(crs, (left + right) / 2, (bottom + top) / 2, step=max(min_step, (right - left) / 100))
    except Exception as exc:
        raise SourceUnreadable(f"cannot measure ground distance in {crs}: {exc}") from exc
    if not math.isfinite(scale) or scale <= 0:
        raise SourceUnreadable(f"cannot measure ground distance in {crs} at the image centre")
    return scale


def is_utm(crs: CRS) -> bool:
    """A UTM zone (any datum) or the polar UPS grids: the grids sources are analysed in."""
    if crs.to_epsg() in (UPS_NORTH, UPS_SOUTH):
        return True
    try:
        return PCRS.from_wkt(crs.to_wkt()).utm_zone is not None
    except Exception:
        return False


def grid_for(dataset: rasterio.DatasetReader, gsd: float, patch: int, window: int, max_patches: int) -> Grid:
    """The analysis grid: pixel = ``gsd`` metres on the ground, windows on the ground lattice.

    The grid's CRS is the source's own if it is a UTM zone (no warping), else the UTM zone of the
    image's centre (UPS beyond UTM's latitudes): Web Mercator, geographic and national grids are read
    onto it, so two files of the same place get the same windows whatever CRS they were stored in.
    Refuses (400) a source whose grid would exceed ``max_patches`` before anything is allocated: a
    tiny sparse file can claim to cover the whole planet.
    """
    crs = dataset.crs
    left, bottom, right, top = dataset.bounds
    too_large = RequestTooLarge(
        f"the image is too large for one {gsd} m analysis grid "
        f"(over DINOTILES_MAX_SCENE_PATCHES={max_patches:,} patches)"
    )
    if not all(map(math.isfinite, (left, bottom, right, top))) or right <= left or top <= bottom:
        raise SourceUnreadable("the image's extent is not finite")
    # metres per CRS unit, before any projection (geographic: a metre-per-degree upper bound)
    units_m = 111_320.0 if crs.is_geographic else _scale_at_centre(crs, (left, bottom, right, top), 1e-6)
    if ((right - left) * units_m / (gsd * patch)) * ((top - bottom) * units_m / (gsd * patch)) > max_patches * 4:
        raise too_large
    if not is_utm(crs):
        try:
            (lon,), (lat,) = transform(crs, "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2])
            crs = _metric_crs_for(lon, lat)
            left, bottom, right, top = transform_bounds(dataset.crs, crs, *dataset.bounds, densify_pts=21)
        except Exception as exc:
            raise SourceUnreadable(f"the image's extent cannot be projected to a UTM grid: {exc}") from exc
    if not all(map(math.isfinite, (left, bottom, right, top))) or right <= left or top <= bottom:
        raise SourceUnreadable("the image's extent is not finite in a metric grid")
    scale = _scale_at_centre(crs, (left, bottom, right, top), 1.0)
    pixel = gsd if abs(scale - 1.0) < SCALE_TOLERANCE else gsd / scale  # UTM: within 0.1 %, so exactly gsd
    cell = pixel * patch
    step = cell * (window // patch - 2 * BORDER)  # one window core: the lattice windows sit on
    x0, y0 = math.floor(left / step) * step, math.ceil(top / step) * step
    rows, cols = (y0 - bottom) / cell, (right - x0) / cell
    if rows * cols > max_patches:
        raise too_large
    return Grid(
        crs=crs,
        x0=x0,
        y0=y0,
        pixel=pixel,
        patch=patch,
        window=window,
        rows=max(1, math.ceil(rows)),
        cols=max(1, math.ceil(cols)),
        extent=(left, bottom, right, top),
    )


@dataclass(frozen=True)
class WindowPixels:
    """One window at the analysis GSD: the image the encoder sees and which patches are real."""

    image: np.ndarray  # uint8 [3, W, W]
    valid: np.ndarray  # bool [g, g]


def patch_validity(image: np.ndarray, mask: np.ndarray, patch: int) -> np.ndarray:
    """A patch is valid when half its pixels are data and it is not flat fill."""
    g = image.shape[-1] // patch
    blocks = mask.reshape(g, patch, g, patch).astype(bool)
    share = blocks.mean(axis=(1, 3))
    pixels = image.reshape(3, g, patch, g, patch).astype(np.float32)
    std = pixels.std(axis=(2, 4)).max(axis=0)
    return (share >= MIN_VALID_SHARE) & (std >= FLAT_STD)


def read_window(reader: Reader, plan: BandPlan, grid: Grid, i: int, j: int) -> WindowPixels:
    """Resample window (i, j) to the analysis grid (bilinear) and fill no-data with black."""
    img = reader.part(
        grid.window_bounds(i, j),
        dst_crs=grid.crs,
        bounds_crs=grid.crs,
        indexes=list(plan.indexes),
        width=grid.window,
        height=grid.window,
        max_size=None,
        resampling_method="bilinear",
        reproject_method="bilinear",
    )
    data = plan.to_uint8(np.asarray(img.array.data))
    mask = np.asarray(~np.ma.getmaskarray(img.array).any(axis=0), dtype=bool)
    data = np.where(mask[None], data, 0).astype(np.uint8)
    return WindowPixels(image=data, valid=patch_validity(data, mask, grid.patch))
