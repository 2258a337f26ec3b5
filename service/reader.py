"""rio-tiler style reader whose ImageData holds cluster IDs instead of pixels.

tile/point/statistics all go through the engine's per-window cache; a tile is the
patch-ID mosaic resampled (nearest) onto the tile's grid, so every TMS and zoom
samples the same cluster raster.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform, transform_bounds
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.models import ImageData

from service.clusters import ClusterEngine, SourceView
from service.config import Settings
from service.encoder import NODATA
from service.limits import RequestTooLarge, bbox_area_m2, split_antimeridian
from service.sources import (
    BandPlan,
    ReadLimits,
    SourceUnreadable,
    band_plan,
    dataset_fingerprint,
    gdal_env,
    guarded_reader,
    open_dataset,
    resolve_source,
)
from service.windows import Grid, grid_for, ground_scale

WGS84 = CRS.from_epsg(4326)


# per-source facts that cost reads or transforms, keyed by source identity (path, mtime, size / URL)
_SOURCE_META: dict[str, tuple[Grid, BandPlan]] = {}
_ZOOMS: dict[tuple[str, str | None, int, int], int] = {}


def _remember(cache: dict[Any, Any], key: Any, compute: Any, limit: int = 1024) -> Any:
    """Memoise into a small insertion-ordered cache, dropping the oldest entries past ``limit``."""
    if key not in cache:
        cache[key] = compute()
        while len(cache) > limit:
            cache.pop(next(iter(cache)))
    return cache[key]


class BelowMinZoom(LookupError):
    """A tile would need more inference windows than the budget (HTTP 404)."""


class AreaTooLarge(RequestTooLarge):
    """A statistics area over the configured size (HTTP 400)."""


@dataclass
class ClusterReader:
    """Open one source for one request; cheap: inference lives in the engine's cache."""

    url: str
    engine: ClusterEngine
    settings: Settings
    tms: TileMatrixSet
    view: SourceView = field(init=False)

    _stack: ExitStack = field(init=False, default_factory=ExitStack)

    def __post_init__(self) -> None:
        # GDAL options (timeouts, egress proxy) hold for everything read until __exit__
        self._stack.enter_context(rasterio.Env(**gdal_env(self.settings)))
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise

    def _open(self) -> None:
        source = resolve_source(self.url, self.settings)
        dataset = self._stack.enter_context(open_dataset(source.path, self.settings.http_timeout))
        key = source.key if not source.key.startswith("s3://") else f"{source.key}#{dataset_fingerprint(dataset)}"
        bundle, settings = self.engine.bundle, self.settings
        # grid and band plan depend only on the source: computed once per file version
        meta = _remember(
            _SOURCE_META,
            key,
            lambda: (
                grid_for(dataset, bundle.gsd, bundle.patch, bundle.window, settings.max_scene_patches),
                band_plan(dataset),
            ),
        )
        reader_cls = guarded_reader(ReadLimits.of(settings))
        reader = reader_cls(source.path, dataset=dataset, tms=self.tms)
        self.view = SourceView(key=key, reader=reader, grid=meta[0], plan=meta[1])

    def __enter__(self) -> ClusterReader:
        return self

    def __exit__(self, *args: object) -> None:
        self._stack.close()

    # -- zooms -------------------------------------------------------------
    def _tile_patch_span(self, lon: float, lat: float, z: int) -> tuple[int, int]:
        grid = self.view.grid
        tile = self.tms.tile(lon, lat, z)
        b = transform_bounds(self.tms.rasterio_crs, grid.crs, *self.tms.xy_bounds(tile), densify_pts=21)
        return math.ceil((b[3] - b[1]) / grid.cell), math.ceil((b[2] - b[0]) / grid.cell)

    @property
    def minzoom(self) -> int:
        """Lowest zoom whose worst-case tile fits in the window budget (memoised per source, TMS, budget)."""
        memo = (self.view.key, self.tms.id, self.settings.max_windows, self.view.grid.window)
        return _remember(_ZOOMS, memo, self._minzoom)

    def _minzoom(self) -> int:
        grid = self.view.grid
        lon, lat = transform(grid.crs, WGS84, [grid.centre()[0]], [grid.centre()[1]])
        for z in range(self.maxzoom, self.tms.minzoom - 1, -1):
            rows, cols = self._tile_patch_span(lon[0], lat[0], z)
            if (math.ceil(rows / grid.core) + 1) * (math.ceil(cols / grid.core) + 1) > self.settings.max_windows:
                return z + 1
        return self.tms.minzoom

    @property
    def maxzoom(self) -> int:
        """The zoom whose pixels are closest to the analysis GSD: deeper only magnifies."""
        bounds = self.tms.xy_bbox
        grid = self.view.grid
        x, y = transform(grid.crs, self.tms.rasterio_crs, [grid.centre()[0]], [grid.centre()[1]])
        scale = ground_scale(self.tms.rasterio_crs, x[0], y[0], step=(bounds.right - bounds.left) / 1e6)
        return self.tms.zoom_for_res(self.engine.bundle.gsd / scale)

    def geographic_bounds(self) -> tuple[float, float, float, float]:
        return tuple(transform_bounds(self.view.grid.crs, WGS84, *self.view.grid.bounds(), densify_pts=21))  # type: ignore[return-value]

    # -- reads -------------------------------------------------------------
    def tile(self, x: int, y: int, z: int, tilesize: int = 256) -> ImageData:
        """Cluster IDs on the tile grid: uint16 [1, tilesize, tilesize], 65535 where no data."""
        if z < self.minzoom:
            raise BelowMinZoom(
                f"zoom {z} is below minzoom {self.minzoom}: a tile would need more than "
                f"{self.settings.max_windows} inference windows (DINOTILES_MAX_WINDOWS)"
            )
        grid = self.view.grid
        tile_bounds = self.tms.xy_bounds(Tile(x, y, z))
        footprint = transform_bounds(self.tms.rasterio_crs, grid.crs, *tile_bounds, densify_pts=21)
        span = grid.patch_range(footprint)
        if span is None:
            raise TileOutsideBounds(f"Tile(x={x}, y={y}, z={z}) is outside bounds")
        mosaic = self.engine.mosaic(self.view, *span, limit=self.settings.max_windows)
        ids = np.full((1, tilesize, tilesize), NODATA, np.uint16)
        dst_transform = from_bounds(*tile_bounds, tilesize, tilesize)
        reproject(
            mosaic[None],
            ids,
            src_transform=grid.patch_transform(span[0], span[2]),
            src_crs=grid.crs,
            src_nodata=NODATA,
            dst_transform=dst_transform,
            dst_crs=self.tms.rasterio_crs,
            dst_nodata=NODATA,
            resampling=Resampling.nearest,
        )
        return ImageData(
            np.ma.MaskedArray(ids, mask=ids == NODATA),
            bounds=tile_bounds,
            crs=self.tms.rasterio_crs,
            band_descriptions=["cluster"],
        )

    def point(self, lon: float, lat: float) -> dict[str, Any]:
        """The cluster of the patch under (lon, lat), or None over no data / outside."""
        grid = self.view.grid
        xs, ys = transform(WGS84, grid.crs, [lon], [lat])
        rc = grid.patch_at(xs[0], ys[0])
        if rc is None:
            raise TileOutsideBounds(f"point ({lon}, {lat}) is outside the image")
        value = int(self.engine.mosaic(self.view, rc[0], rc[0] + 1, rc[1], rc[1] + 1, limit=1)[0, 0])
        return {"cluster": None if value == NODATA else value, "patch": {"row": rc[0], "col": rc[1]}}

    def cluster_counts(self, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, int]:
        """Counts per cluster of the patches whose centre lies in the EPSG:4326 bbox (minx > maxx crosses ±180°)."""
        area = bbox_area_m2(bbox)
        if area > self.settings.max_stats_area_m2:
            raise AreaTooLarge(
                f"area of {area:,.0f} m² is over the limit of {self.settings.max_stats_area_m2:,.0f} m² "
                "(DINOTILES_MAX_STATS_AREA_M2)"
            )
        grid = self.view.grid
        spans = []
        for part in split_antimeridian(bbox):
            try:
                footprint = transform_bounds(WGS84, grid.crs, *part, densify_pts=21)
            except Exception as exc:
                raise SourceUnreadable(f"bbox {part} cannot be placed on the image's grid: {exc}") from exc
            span = grid.patch_range(footprint) if all(map(math.isfinite, footprint)) else None
            if span is not None:
                spans.append((part, span))
        if not spans:
            raise TileOutsideBounds("bbox does not intersect the image")
        windows = sum(grid.count_windows(*span) for _, span in spans)
        if windows > self.settings.max_request_windows:
            raise RequestTooLarge(
                f"the bbox needs {windows} inference windows, over DINOTILES_MAX_REQUEST_WINDOWS="
                f"{self.settings.max_request_windows}"
            )
        counts = np.zeros(self.engine.bundle.codebook.k, np.int64)
        patches = 0
        for part, (r0, r1, c0, c1) in spans:
            ids = self.engine.mosaic(self.view, r0, r1, c0, c1, limit=self.settings.max_request_windows)
            rows, cols = np.mgrid[r0:r1, c0:c1]
            xs = grid.x0 + (cols + 0.5) * grid.cell
            ys = grid.y0 - (rows + 0.5) * grid.cell
            lon, lat = transform(grid.crs, WGS84, xs.ravel().tolist(), ys.ravel().tolist())
            lon_a, lat_a = np.asarray(lon), np.asarray(lat)
            inside = (lon_a >= part[0]) & (lon_a <= part[2]) & (lat_a >= part[1]) & (lat_a <= part[3])
            values = ids.ravel()[inside]
            counts += np.bincount(values[values != NODATA], minlength=counts.size)
            patches += int(values.size)
        return counts, patches
