"""rio-tiler reader whose ImageData holds cluster IDs instead of pixels.

``ClusterReader`` is a ``GuardedReader`` (so a rio-tiler ``Reader``: GeoTIFF only, bounded
reads, scoped GDAL options) that adds the 0.25 m analysis grid and the engine: ``tile``,
``point`` and ``cluster_counts`` go through the engine's per-window cache; a tile is the
patch-ID mosaic resampled (nearest) onto the tile's grid, so every TMS and zoom samples the same
cluster raster. The URL guard is not its business: it is handed a checked ``Source``.
"""

from __future__ import annotations

import math
import threading
from typing import Any, ClassVar

import attr
import numpy as np
from cachetools import LRUCache
from morecantile import Tile
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform, transform_bounds
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.models import ImageData

from dinotiles.core.encoder import NODATA
from dinotiles.core.engine import ClusterEngine, SourceView
from dinotiles.core.errors import NotFound
from dinotiles.core.grid import grid_for, zoom_for_gsd
from dinotiles.core.limits import RequestLimits, RequestTooLarge, bbox_area_m2, split_antimeridian
from dinotiles.core.sources import (
    GuardedReader,
    Source,
    SourcePolicy,
    SourceUnreadable,
    band_plan,
    dataset_fingerprint,
)

WGS84 = CRS.from_epsg(4326)


class Memo:
    """A bounded, locked LRU for per-source facts that cost reads or transforms (grid, band plan, zooms)."""

    def __init__(self, size: int = 1024) -> None:
        self._cache: LRUCache[Any, Any] = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Any) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()  # outside the lock: two threads may both compute, never block each other
        with self._lock:
            self._cache[key] = value
        return value


# keyed by bundle fingerprint AND source identity: two bundles in one process never share a grid
_SOURCE_META = Memo()
_ZOOMS = Memo()


class BelowMinZoom(NotFound, LookupError):
    """A tile would need more inference windows than the budget (HTTP 404)."""


class AreaTooLarge(RequestTooLarge):
    """A statistics area over the configured size (HTTP 400)."""


@attr.s
class ClusterReader(GuardedReader):
    """One source for one request; cheap to open: inference lives in the engine's cache.

    TiTiler builds readers as ``reader(path, tms=…)``, so the engine, policy and budget are class
    attributes: ``cluster_reader(engine, policy, limits)`` makes the class an app uses.
    """

    engine: ClassVar[ClusterEngine]
    limits: ClassVar[RequestLimits] = RequestLimits()
    view: SourceView = attr.ib(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        source = self.input if isinstance(self.input, Source) else Source.local(str(self.input))
        # without a validator (s3, hosts with no ETag/Last-Modified) the file's own layout names its version
        key = f"{source.key}#{dataset_fingerprint(self.dataset)}" if source.weak else source.key
        bundle, policy = self.engine.bundle, self.policy
        dataset = self.dataset
        grid, plan = _SOURCE_META.get(
            (bundle.fingerprint, key),
            lambda: (
                grid_for(dataset, bundle.gsd, bundle.patch, bundle.window, policy.max_scene_patches),
                band_plan(dataset),
            ),
        )
        self.view = SourceView(key=key, reader=self, grid=grid, plan=plan)

    # -- zooms -------------------------------------------------------------
    def _tile_patch_span(self, lon: float, lat: float, z: int) -> tuple[int, int]:
        grid = self.view.grid
        tile = self.tms.tile(lon, lat, z)
        b = transform_bounds(self.tms.rasterio_crs, grid.crs, *self.tms.xy_bounds(tile), densify_pts=21)
        return math.ceil((b[3] - b[1]) / grid.cell), math.ceil((b[2] - b[0]) / grid.cell)

    @property
    def minzoom(self) -> int:
        """Lowest zoom whose worst-case tile fits in the window budget (memoised per source, TMS, budget)."""
        memo = (self.engine.fingerprint, self.view.key, self.tms.id, self.limits.max_windows)
        return int(_ZOOMS.get(memo, self._compute_minzoom))

    def _compute_minzoom(self) -> int:
        grid = self.view.grid
        lon, lat = transform(grid.crs, WGS84, [grid.centre()[0]], [grid.centre()[1]])
        for z in range(self.maxzoom, self.tms.minzoom - 1, -1):
            rows, cols = self._tile_patch_span(lon[0], lat[0], z)
            if self.engine.worst_case_windows(grid, rows, cols) > self.limits.max_windows:
                return z + 1
        return self.tms.minzoom

    @property
    def maxzoom(self) -> int:
        """The zoom whose pixels are closest to the analysis GSD: deeper only magnifies."""
        grid = self.view.grid
        return zoom_for_gsd(self.tms, grid.crs, *grid.centre(), self.engine.bundle.gsd)

    def get_geographic_bounds(self, crs: CRS) -> tuple[float, float, float, float]:
        """The analysis grid's bounds (what has clusters) in ``crs``."""
        return tuple(transform_bounds(self.view.grid.crs, crs, *self.view.grid.data_bounds(), densify_pts=21))  # type: ignore[return-value]

    def geographic_bounds(self) -> tuple[float, float, float, float]:
        return self.get_geographic_bounds(WGS84)

    @property
    def identity(self) -> str:
        """The source's version as caches and ETags know it."""
        return self.view.key

    # -- reads -------------------------------------------------------------
    def tile(self, tile_x: int, tile_y: int, tile_z: int, tilesize: int | None = 256, **kwargs: Any) -> ImageData:  # type: ignore[override]
        """Cluster IDs on the tile grid: uint16 [1, tilesize, tilesize], 65535 where no data."""
        x, y, z, tilesize = tile_x, tile_y, tile_z, tilesize or 256
        if z < self.minzoom:
            raise BelowMinZoom(
                f"zoom {z} is below minzoom {self.minzoom}: a tile would need more than "
                f"{self.limits.max_windows} inference windows (DINOTILES_MAX_WINDOWS)"
            )
        grid = self.view.grid
        tile_bounds = self.tms.xy_bounds(Tile(x, y, z))
        footprint = transform_bounds(self.tms.rasterio_crs, grid.crs, *tile_bounds, densify_pts=21)
        span = grid.patch_range(footprint)
        if span is None:
            raise TileOutsideBounds(f"Tile(x={x}, y={y}, z={z}) is outside bounds")
        mosaic = self.engine.mosaic(self.view, *span, limit=self.limits.max_windows)
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

    def cluster_point(self, lon: float, lat: float) -> dict[str, Any]:
        """The cluster of the patch under (lon, lat), or None over no data / outside."""
        grid = self.view.grid
        xs, ys = transform(WGS84, grid.crs, [lon], [lat])
        rc = grid.patch_at(xs[0], ys[0])
        if rc is None:
            raise TileOutsideBounds(f"point ({lon}, {lat}) is outside the image")
        row, col = rc
        ids = self.engine.mosaic(self.view, row, row + 1, col, col + 1, limit=self.limits.max_request_windows)
        value = int(ids[0, 0])
        return {"cluster": None if value == NODATA else value, "patch": {"row": rc[0], "col": rc[1]}}

    def cluster_counts(self, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, int]:
        """Counts per cluster of the patches whose centre lies in the EPSG:4326 bbox (minx > maxx crosses ±180°)."""
        area = bbox_area_m2(bbox)
        if area > self.limits.max_stats_area_m2:
            raise AreaTooLarge(
                f"area of {area:,.0f} m² is over the limit of {self.limits.max_stats_area_m2:,.0f} m² "
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
        windows = sum(self.engine.windows_needed(grid, *span) for _, span in spans)
        if windows > self.limits.max_request_windows:
            raise RequestTooLarge(
                f"the bbox needs {windows} inference windows, over DINOTILES_MAX_REQUEST_WINDOWS="
                f"{self.limits.max_request_windows}"
            )
        counts = np.zeros(self.engine.bundle.codebook.k, np.int64)
        patches = 0
        for part, (r0, r1, c0, c1) in spans:
            ids = self.engine.mosaic(self.view, r0, r1, c0, c1, limit=self.limits.max_request_windows)
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


def cluster_reader(engine: ClusterEngine, policy: SourcePolicy, limits: RequestLimits) -> type[ClusterReader]:
    """The ClusterReader class of one app: its engine, source policy and request budget."""
    return type("AppClusterReader", (ClusterReader,), {"engine": engine, "policy": policy, "limits": limits})
