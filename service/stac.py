"""STAC: search a STAC API, resolve an item's raster asset, and summarise items.

Search parameters are validated here (400 before anything is sent); the API's own
failures become 502 (down, refused, malformed) or 504 (slow), with the cause.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from service.clusters import ClusterEngine, SourceView
from service.config import Settings
from service.encoder import NODATA
from service.limits import parse_bbox
from service.sources import check_url
from service.windows import BORDER, read_window

logger = logging.getLogger("dinotiles")
RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "application/x-geotiff")
STATS_SAMPLE = 16  # windows sampled from a large item for /stac/statistics (seeded)
SCENE_WINDOWS = 4  # windows per item for its scene feature


class StacBadRequest(ValueError):
    """A search or item the client got wrong (400)."""


class StacUpstreamError(RuntimeError):
    """The STAC API is down, refused us or answered nonsense (502)."""


class StacTimeout(TimeoutError):
    """The STAC API did not answer in time (504)."""


class JobNotFound(LookupError):
    """No job with that id (404): never created, or finished long ago and dropped."""


@dataclass(frozen=True)
class SearchParams:
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    collections: tuple[str, ...] = ()
    limit: int = 10

    def as_query(self) -> dict[str, Any]:
        q: dict[str, Any] = {"limit": self.limit, "max_items": self.limit}
        if self.bbox:
            q["bbox"] = list(self.bbox)
        if self.datetime:
            q["datetime"] = self.datetime
        if self.collections:
            q["collections"] = list(self.collections)
        return q


def optional_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """A search's bbox, if any (the one parser, so /stac and /cog agree on what a bbox is)."""
    return parse_bbox(text) if text else None


def parse_datetime(text: str | None) -> str | None:
    """RFC 3339 instant or interval (``a/b``, open ends as ``..``)."""
    if not text:
        return None
    parts = text.split("/")
    if len(parts) > 2:
        raise StacBadRequest(f"datetime must be an instant or an interval a/b, got {text!r}")
    stamps: list[datetime | None] = []
    for part in parts:
        if part in ("", "..") and len(parts) == 2:
            stamps.append(None)
            continue
        try:
            stamps.append(datetime.fromisoformat(part.replace("Z", "+00:00")))
        except ValueError as exc:
            raise StacBadRequest(f"datetime {part!r} is not RFC 3339 (e.g. 2024-01-01T00:00:00Z)") from exc
    a, b = ([*stamps, None])[:2]
    if a is not None and b is not None and (a.tzinfo is None or b.tzinfo is None or a > b):
        raise StacBadRequest("datetime interval must have time zones and start before it ends")
    return text


def search_params(bbox: str | None, dt: str | None, collections: str | None, limit: int) -> SearchParams:
    cols = tuple(c.strip() for c in (collections or "").split(",") if c.strip())
    return SearchParams(optional_bbox(bbox), parse_datetime(dt), cols, limit)


class StacClient:
    """pystac-client against DINOTILES_STAC_URL with a timeout, failures mapped to 502/504."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.stac_url
        self.timeout = settings.stac_timeout

    def _call(self, fn: Callable[[], Any]) -> Any:
        from pystac_client.exceptions import APIError

        try:
            return fn()
        except APIError as exc:
            text = str(exc)
            if "timed out" in text.lower() or "timeout" in type(exc.__context__).__name__.lower():
                raise StacTimeout(f"STAC API {self.url} did not answer within {self.timeout} s") from exc
            raise StacUpstreamError(f"STAC API {self.url} failed: {text.splitlines()[0][:300]}") from exc
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise StacUpstreamError(f"STAC API {self.url} answered something that is not STAC: {exc}") from exc

    def _client(self) -> Any:
        from pystac_client import Client

        return self._call(lambda: Client.open(self.url, timeout=self.timeout))

    def check_collections(self, collections: tuple[str, ...]) -> None:
        """Unknown collections are the client's mistake: 400 naming them."""
        if not collections:
            return
        known = {c.id for c in self._call(lambda: list(self._client().get_collections()))}
        unknown = [c for c in collections if c not in known]
        if unknown:
            raise StacBadRequest(
                f"unknown collection(s): {', '.join(unknown)} (the API has: {', '.join(sorted(known))})"
            )

    def search(self, params: SearchParams) -> dict[str, Any]:
        self.check_collections(params.collections)
        client = self._client()
        result: dict[str, Any] = self._call(lambda: client.search(**params.as_query()).item_collection_as_dict())
        if not isinstance(result, dict) or not isinstance(result.get("features"), list):
            raise StacUpstreamError(f"STAC API {self.url} returned no FeatureCollection")
        return result


def item_href(item: dict[str, Any], stac_url: str) -> str:
    """The item's own URL: its self link, else the API's items route."""
    for link in item.get("links", []):
        if link.get("rel") == "self" and link.get("href", "").startswith("http"):
            return str(link["href"])
    return f"{stac_url.rstrip('/')}/collections/{item.get('collection')}/items/{item.get('id')}"


def with_stac_host(settings: Settings) -> Settings:
    """The configured STAC API's host may always be read (its items, not arbitrary URLs)."""
    parts = urlsplit(settings.stac_url)
    host = parts.netloc.lower()
    return (
        settings if host in settings.allowed_hosts else replace(settings, allowed_hosts=(*settings.allowed_hosts, host))
    )


class ItemCache:
    """Fetched item JSON by URL, kept a few minutes: tiles of one item fetch it once."""

    def __init__(self, ttl: float = 300.0, size: int = 256) -> None:
        self.ttl, self.size = ttl, size
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, settings: Settings) -> dict[str, Any]:
        with self._lock:
            hit = self._items.get(url)
            if hit and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
        item = fetch_item(url, settings)
        with self._lock:
            self._items[url] = (time.monotonic(), item)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item


def fetch_item(url: str, settings: Settings) -> dict[str, Any]:
    checked = check_url(url, with_stac_host(settings))
    try:
        if checked.startswith("http"):
            response = httpx.get(checked, timeout=settings.stac_timeout, follow_redirects=False)
            response.raise_for_status()
            item = response.json()
        else:
            with open(checked) as fh:
                item = json.load(fh)
    except httpx.TimeoutException as exc:
        raise StacTimeout(f"item {url} did not arrive within {settings.stac_timeout} s") from exc
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            raise StacBadRequest(f"no STAC item at {url}") from exc
        raise StacUpstreamError(f"fetching {url} failed: HTTP {exc.response.status_code}") from exc
    except (httpx.HTTPError, OSError) as exc:
        raise StacUpstreamError(f"fetching {url} failed: {exc}") from exc
    except ValueError as exc:
        raise StacBadRequest(f"{url} is not JSON") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise StacBadRequest(f"{url} is not a STAC item")
    return item


def raster_asset(item: dict[str, Any], assets: list[str] | None) -> tuple[str, str]:
    """(name, href) of the asset to tile: the one asked for, else `visual`, else the first GeoTIFF."""
    available = item["assets"]
    names = assets or (["visual"] if "visual" in available else [])
    if not names:
        names = [
            n
            for n, a in available.items()
            if isinstance(a, dict) and any(t in str(a.get("type", "")) for t in RASTER_TYPES)
        ][:1]
    if not names:
        raise StacBadRequest(f"item {item.get('id')!r} has no raster asset (assets: {', '.join(available) or 'none'})")
    if len(names) > 1:
        raise StacBadRequest("one asset at a time: cluster layers are computed from one RGB image")
    name = names[0]
    if name not in available:
        raise StacBadRequest(f"item {item.get('id')!r} has no asset {name!r} (assets: {', '.join(available)})")
    asset = available[name]
    if not isinstance(asset, dict) or not isinstance(asset.get("href"), str) or not asset["href"]:
        raise StacBadRequest(f"asset {name!r} of item {item.get('id')!r} has no href")
    kind = str(asset.get("type", ""))
    if kind and not any(t in kind for t in RASTER_TYPES):
        raise StacBadRequest(f"asset {name!r} is {kind}, not a GeoTIFF")
    return name, str(asset["href"])


def sample_windows(view: SourceView, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """All windows if few, else n chosen uniformly at random (seeded, so repeatable).

    Draws indices without listing every window: a scene's window count is bounded at open
    (DINOTILES_MAX_SCENE_PATCHES), but the list of them need never exist.
    """
    grid = view.grid
    cols, total = grid.window_cols, grid.window_rows * grid.window_cols
    if total <= n:
        return [(k // cols, k % cols) for k in range(total)]
    rng = np.random.default_rng(seed)
    picked: set[int] = set()
    while len(picked) < n:
        picked.update(int(k) for k in rng.integers(0, total, size=n - len(picked)))
    return [(k // cols, k % cols) for k in sorted(picked)]


def sampled_counts(engine: ClusterEngine, view: SourceView, n: int = STATS_SAMPLE) -> tuple[np.ndarray, int, int]:
    """Cluster counts over a sample of windows: (counts, windows sampled, windows in the item)."""
    windows = sample_windows(view, n)
    ids = engine.window_ids(view, windows)
    values = np.concatenate([a.ravel() for a in ids.values()])
    valid = values[values != NODATA]
    total = view.grid.window_rows * view.grid.window_cols
    return np.bincount(valid, minlength=engine.bundle.codebook.k), len(windows), total


def item_feature(engine: ClusterEngine, view: SourceView, feature: str, n: int = SCENE_WINDOWS) -> np.ndarray:
    """One vector per item: mean over sampled windows of the window's CLS / mean valid patch token."""
    from service.scenes import scene_vector

    vectors = []
    for i, j in sample_windows(view, n):
        win = read_window(view.reader, view.plan, view.grid, i, j)
        if win.valid.mean() < 0.05:
            continue
        with engine.gate.admit(1):
            patches, cls = engine.encoder.features(win.image[None])
        core = slice(BORDER, BORDER + view.grid.core)
        keep = win.valid[core, core]
        mean_patch = patches[0][core, core][keep].mean(axis=0, keepdims=True)[:, None, None, :]
        vectors.append(scene_vector(mean_patch, cls, feature)[0])
    if not vectors:
        raise StacBadRequest("the item's image holds no valid pixels")
    return np.mean(vectors, axis=0)


def cluster_items(
    engine: ClusterEngine, settings: Settings, tms: Any, items: list[dict[str, Any]], assets: str, feature: str
) -> dict[str, Any]:
    """Scene-cluster STAC items; items without the asset are listed under `skipped`, never dropped silently."""
    from service.reader import ClusterReader
    from service.scenes import cluster_scenes

    vectors, names, skipped = [], [], []
    for item in items:
        try:
            _, href = raster_asset(item, [assets])
        except StacBadRequest as exc:
            skipped.append({"id": str(item.get("id")), "reason": str(exc)})
            continue
        with ClusterReader(href, engine, settings, tms) as src:
            vectors.append(item_feature(engine, src.view, feature))
        names.append(str(item.get("id")))
    if len(vectors) < 3:
        raise StacBadRequest(f"need at least 3 items with a {assets!r} asset, found {len(vectors)}")
    out = cluster_scenes(np.stack(vectors)).as_dict(names)
    out["feature"] = feature
    out["skipped"] = skipped
    return out


@dataclass
class Job:
    id: str
    status: str = "running"
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)


class Jobs:
    """Background work for large requests: 202 + a URL to poll, never a hung request.

    A bounded pool runs ``workers`` jobs at once and holds at most ``pending`` more; past that a
    new job is refused (503 + Retry-After) instead of starting threads without bound. Finished
    jobs are kept for polling (the oldest finished ones dropped past ``keep``); a running or
    queued job is never dropped.
    """

    def __init__(self, workers: int = 1, pending: int = 8, keep: int = 100) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.keep, self.pending = keep, pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dinotiles-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], dict[str, Any]]) -> Job:
        from service.limits import Overloaded

        job = Job(id=uuid.uuid4().hex, status="queued")
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))
            if waiting >= self.pending:
                raise Overloaded(f"{waiting} scene jobs are queued or running (the limit); retry later", retry_after=30)
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.status in ("done", "failed")]
            for k in finished[: max(0, len(self._jobs) - self.keep)]:
                del self._jobs[k]

        def run() -> None:
            job.status = "running"
            try:
                job.result = work()
                job.status = "done"
            except Exception as exc:  # reported to the poller, and logged
                logger.warning("scene job %s failed: %s", job.id, exc)
                job.error = f"{type(exc).__name__}: {exc}"
                job.status = "failed"

        self._pool.submit(run)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)
