"""Precomputed cluster layers (``dinotiles batch`` results) as the server reads them.

``DINOTILES_RESULTS`` names one or more result locations (a directory or an ``s3://`` prefix); each
is a collection (it holds ``collection.json``) or a folder of collections. The index lists their
items once a minute at most, keeping only items made with the engine's own fingerprint (same
bundle, codebook, precision and blending: same IDs). It serves two things:

- a collection as one layer at every zoom (:class:`CollectionReader`: a mosaic of the items'
  ``cluster_ids.tif``, whose overviews keep real IDs by mode), and its statistics from those IDs;
- the IDs of a source a request would otherwise encode (``ids_for(source_key)``): the engine reads
  them block by block, so precomputed areas cost no inference.

Result locations are the operator's, not the client's: they are not behind the URL guard, but an
item's asset must sit in its own folder (relative href, no ``..``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import attr
import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
import rasterio.windows
from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader
from rio_tiler.mosaic.methods import FirstMethod

from dinotiles.core.encoder import NODATA
from dinotiles.core.errors import NotFound
from dinotiles.core.grid import zoom_for_gsd
from dinotiles.core.limits import RequestTooLarge, check_deadline

logger = logging.getLogger("dinotiles.results")

REFRESH_SECONDS = 60.0


class UnknownCollection(NotFound, LookupError):
    """No result collection of that id (HTTP 404)."""


@dataclass(frozen=True)
class ResultItem:
    """One source's precomputed IDs."""

    id: str
    bbox: tuple[float, float, float, float]  # EPSG:4326
    ids_href: str  # cluster_ids.tif: a local path or an s3:// URL
    source_key: str | None  # the source's cache identity (URL and version) when it was rendered
    datetime: str


@dataclass(frozen=True)
class ResultCollection:
    id: str
    description: str
    location: str
    items: tuple[ResultItem, ...]
    document: dict[str, Any] = field(repr=False)
    scenes: dict[str, Any] | None = field(default=None, repr=False)  # `scenes cluster --results`

    @cached_property
    def bbox(self) -> tuple[float, float, float, float]:
        boxes = np.array([item.bbox for item in self.items])
        return (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))  # type: ignore[return-value]

    @cached_property
    def version(self) -> str:
        """Changes whenever an item is added or re-rendered: part of tiles' ETags."""
        import hashlib

        text = "|".join(f"{i.id}:{i.datetime}:{i.source_key}" for i in self.items)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def items_in(self, bbox: tuple[float, float, float, float]) -> list[ResultItem]:
        w, s, e, n = bbox
        return [i for i in self.items if i.bbox[0] < e and i.bbox[2] > w and i.bbox[1] < n and i.bbox[3] > s]


def _asset_href(output: Any, folder: str, item: dict[str, Any]) -> str | None:
    href = str(item.get("assets", {}).get("cluster_ids", {}).get("href", ""))
    name = href.removeprefix("./")
    if not name or "/" in name or name.startswith(".") or "://" in href:
        return None  # only a file in the item's own folder
    return str(output.href(folder, name))


def load_collection(location: str, fingerprint: str) -> ResultCollection | None:
    """The collection at ``location`` (None if there is none), with the items this engine can serve."""
    from dinotiles.batch.outputs import open_output

    output = open_output(location, create=False)
    document = output.read_json("collection.json")
    if document is None or document.get("type") != "Collection" or not document.get("id"):
        return None
    items = []
    for folder, item in output.items():
        try:
            props = item.get("properties", {})
            href = _asset_href(output, folder, item)
            if props.get("dinotiles:bundle") != fingerprint or href is None:
                logger.info(
                    "results %s/%s: made with another bundle, or no asset of its own: not served", location, folder
                )
                continue
            w, s, e, n = (float(v) for v in item["bbox"])
            source = props.get("dinotiles:source")
            items.append(
                ResultItem(
                    str(item.get("id", folder)),
                    (w, s, e, n),
                    href,
                    str(source) if source else None,
                    str(props.get("datetime", "")),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):  # one malformed item.json hides only itself
            logger.warning("results %s/%s: malformed item.json, not served", location, folder)
    if not items:
        return None
    # newest first: where items overlap, the mosaic shows the most recent
    items.sort(key=lambda i: i.datetime, reverse=True)
    scenes = output.read_json("scenes.json")  # `scenes cluster --results` beside it
    return ResultCollection(
        str(document["id"]), str(document.get("description", "")), location, tuple(items), document, scenes
    )


class ResultsIndex:
    """The result collections under ``locations``, relisted in the background every ``refresh_seconds``.

    Requests read the last snapshot and never wait for a listing (thousands of S3 objects take a
    while); only the very first use lists synchronously. A location that fails to list keeps its
    last good collections.
    """

    def __init__(self, locations: tuple[str, ...], fingerprint: str, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.locations = locations
        self.fingerprint = fingerprint
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._loaded = -math.inf
        self._scanning = False
        self._by_location: dict[str, list[ResultCollection]] = {}
        self._collections: dict[str, ResultCollection] = {}
        self._by_source: dict[str, ResultItem] = {}

    def _scan_location(self, location: str) -> list[ResultCollection]:
        first = load_collection(location, self.fingerprint)
        if first is not None:
            return [first]
        from dinotiles.batch.outputs import open_output

        output = open_output(location, create=False)
        found = [load_collection(output.href(child), self.fingerprint) for child in output.children()]
        return [c for c in found if c is not None]

    def _scan(self) -> None:
        for location in self.locations:
            try:
                self._by_location[location] = self._scan_location(location)
            except Exception:  # one unreadable location must not take the others (or the server) down
                logger.exception("results location %s could not be listed; keeping what it had", location)
        found: dict[str, ResultCollection] = {}
        for collections in self._by_location.values():
            for c in collections:
                found.setdefault(c.id, c)
        self._collections = found
        self._by_source = {i.source_key: i for c in found.values() for i in c.items if i.source_key}

    def _refresh(self) -> None:
        try:
            self._scan()
        finally:
            with self._lock:
                self._loaded = time.monotonic()
                self._scanning = False

    def _fresh(self) -> None:
        if not self.locations:
            return
        with self._lock:
            stale = time.monotonic() - self._loaded >= self.refresh_seconds
            first = self._loaded == -math.inf
            if not stale or self._scanning:
                return
            self._scanning = True
        if first:
            self._refresh()  # nothing to answer from yet
        else:
            threading.Thread(target=self._refresh, name="dinotiles-results-scan", daemon=True).start()

    def collections(self) -> dict[str, ResultCollection]:
        self._fresh()
        return dict(self._collections)

    def get(self, collection_id: str) -> ResultCollection:
        found = self.collections().get(collection_id)
        if found is None:
            raise UnknownCollection(f"no result collection {collection_id!r} (see /collections)")
        return found

    def ids_for(self, source_key: str) -> str | None:
        """The precomputed IDs (cluster_ids.tif) of that source at that version, if any."""
        self._fresh()
        item = self._by_source.get(source_key)
        return None if item is None else item.ids_href


def results_env() -> rasterio.Env:
    """GDAL options for reading results: bounded HTTP waits, no directory listings. The locations are
    the operator's; the files are opened as GeoTIFFs only (a VRT could point anywhere)."""
    return rasterio.Env(
        GDAL_HTTP_TIMEOUT=10,
        GDAL_HTTP_CONNECTTIMEOUT=5,
        GDAL_HTTP_LOW_SPEED_TIME=10,
        GDAL_HTTP_LOW_SPEED_LIMIT=1024,
        GDAL_HTTP_MAX_RETRY=1,
        GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
        CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif",
    )


@contextmanager
def open_ids(href: str) -> Iterator[rasterio.DatasetReader]:
    """A result's cluster_ids.tif, as a GeoTIFF only; a failure is the error a client can act on
    (502/504 for an unreachable store, 400 for a broken file), never a 500."""
    from dinotiles.core.sources import classify_error

    started = time.monotonic()
    try:
        with results_env(), rasterio.open(href, driver="GTiff") as ds:
            yield ds
    except rasterio.errors.RasterioError as exc:
        raise classify_error(href, exc, started, 10.0) from exc


@attr.s
class CollectionReader:
    """A result collection as one layer: what the tile, point and statistics routes ask of a reader.

    Tiles mosaic the items' IDs (nearest, on the items' mode overviews; newest item first where they
    overlap); a tile over more than ``max_items`` items is refused before any read.
    """

    input: Any = attr.ib()  # the collection id (a Source: str)
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)

    index: ClassVar[ResultsIndex]
    gsd: ClassVar[float] = 0.25  # the analysis GSD: the on-the-fly layer's deepest zoom
    k: ClassVar[int] = 512
    max_items: ClassVar[int] = 64
    max_stats_area_m2: ClassVar[float] = 2.5e8
    max_pixels: ClassVar[int] = 100_000_000
    covered: list[str] = attr.ib(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.collection = self.index.get(str(self.input))
        self.bounds = self.collection.bbox
        self.crs = WGS84_CRS
        west, south, east, north = self.bounds
        self.minzoom = self.tms.minzoom
        self.maxzoom = zoom_for_gsd(self.tms, WGS84_CRS, (west + east) / 2, (south + north) / 2, self.gsd)

    def __enter__(self) -> CollectionReader:
        return self

    def __exit__(self, *args: Any) -> None:
        return None

    @property
    def identity(self) -> str:
        return f"collection:{self.collection.id}@{self.collection.version}"

    def get_geographic_bounds(self, crs: CRS) -> tuple[float, float, float, float]:
        return self.bounds

    def tile(self, tile_x: int, tile_y: int, tile_z: int, tilesize: int | None = 256, **kwargs: Any) -> ImageData:
        tile = Tile(tile_x, tile_y, tile_z)
        items = self.collection.items_in(tuple(self.tms.bounds(tile)))  # type: ignore[arg-type]
        if not items:
            raise TileOutsideBounds(f"{tile} is outside every item of collection {self.collection.id!r}")
        if len(items) > self.max_items:
            raise RequestTooLarge(
                f"{tile} covers {len(items)} items of {self.collection.id!r}, over DINOTILES_MAX_MOSAIC_ITEMS="
                f"{self.max_items}: zoom in"
            )
        size = tilesize or 256

        def read(href: str, x: int, y: int, z: int, **_: Any) -> ImageData:
            check_deadline()
            with open_ids(href) as ds, Reader(href, dataset=ds, tms=self.tms) as src:
                return src.tile(x, y, z, tilesize=size, resampling_method="nearest", reproject_method="nearest")

        image, _ = mosaic_reader(
            [i.ids_href for i in items], read, tile_x, tile_y, tile_z, pixel_selection=FirstMethod(), threads=0
        )
        data = np.asarray(image.array.filled(NODATA), dtype=np.uint16)
        return ImageData(
            np.ma.MaskedArray(data, mask=data == NODATA),
            bounds=image.bounds,
            crs=image.crs,
            band_descriptions=["cluster"],
        )

    def cluster_point(self, lon: float, lat: float) -> dict[str, Any]:
        """The cluster under (lon, lat) in the newest item that has data there (items bounded as for tiles)."""
        under = [i for i in self.collection.items if i.bbox[0] <= lon <= i.bbox[2] and i.bbox[1] <= lat <= i.bbox[3]]
        if not under:
            raise TileOutsideBounds(f"point ({lon}, {lat}) is outside collection {self.collection.id!r}")
        if len(under) > self.max_items:
            raise RequestTooLarge(
                f"({lon}, {lat}) lies in {len(under)} items, over DINOTILES_MAX_MOSAIC_ITEMS={self.max_items}"
            )
        for item in under:
            check_deadline()
            with open_ids(item.ids_href) as ds:
                x, y = rasterio.warp.transform(WGS84_CRS, ds.crs, [lon], [lat])
                row, col = ds.index(x[0], y[0])
                if not (0 <= row < ds.height and 0 <= col < ds.width):
                    continue
                value = int(ds.read(1, window=((row, row + 1), (col, col + 1)))[0, 0])
            if value != NODATA:
                return {"cluster": value, "patch": {"row": int(row), "col": int(col)}, "item": item.id}
        return {"cluster": None, "patch": {}, "item": None}

    def cluster_counts(self, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, int]:
        """Counts per cluster of the precomputed patches in the bbox, over every item it touches.

        Items are read at full resolution (one pixel per patch); where items overlap, each counts
        its own patches (a scene is a sample of the ground, and the answer names the items).
        """
        from dinotiles.core.reader import bbox_area_m2

        area = bbox_area_m2(bbox)
        if area > self.max_stats_area_m2:
            raise RequestTooLarge(
                f"area of {area:,.0f} m² is over the limit of {self.max_stats_area_m2:,.0f} m² "
                "(DINOTILES_MAX_COLLECTION_STATS_AREA_M2)"
            )
        items = self.collection.items_in(bbox)
        if not items:
            raise TileOutsideBounds(f"bbox does not intersect collection {self.collection.id!r}")
        counts = np.zeros(self.k, np.int64)
        patches = 0
        pixels = 0
        self.covered = []
        for item in items:
            check_deadline()
            with open_ids(item.ids_href) as ds:
                left, bottom, right, top = transform_bounds(WGS84_CRS, ds.crs, *bbox, densify_pts=21)
                window = from_bounds(left, bottom, right, top, ds.transform).round_offsets().round_lengths()
                try:
                    window = window.intersection(rasterio.windows.Window(0, 0, ds.width, ds.height))
                except rasterio.errors.WindowError:  # the bbox meets the item's envelope, not its raster
                    continue
                pixels += int(window.width * window.height)
                if pixels > self.max_pixels:
                    raise RequestTooLarge(f"the bbox covers over {self.max_pixels:,} precomputed patches")
                ids = ds.read(1, window=window)
            valid = ids[ids != NODATA].ravel()
            counts += np.bincount(valid[valid < self.k], minlength=self.k)[: self.k]
            patches += int(ids.size)
            self.covered.append(item.id)
        return counts, patches


def collection_reader(
    index: ResultsIndex, gsd: float, k: int, max_items: int, max_stats_area_m2: float, max_pixels: int
) -> type[CollectionReader]:
    """A reader class bound to this index and these limits (TiTiler builds readers from a class)."""
    return type(
        "BoundCollectionReader",
        (CollectionReader,),
        {
            "index": index,
            "gsd": gsd,
            "k": k,
            "max_items": max_items,
            "max_stats_area_m2": max_stats_area_m2,
            "max_pixels": max_pixels,
        },
    )
