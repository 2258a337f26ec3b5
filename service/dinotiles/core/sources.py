"""Which URLs may be read, how a source is opened, and how it is identified: one guarded path.

Every route that opens a raster (cluster tiles, TiTiler's /rgb, STAC items, statistics, render)
comes through here:
- ``check_url``: the URL itself (scheme, host, bucket, local root), before anything is touched;
- ``resolve_source``: for http(s), a HEAD that follows at most 3 redirects *itself*, each hop
  checked like the first, and yields the ETag/Last-Modified that makes the cache key;
- ``gdal_env``: GDAL options for every read, scoped with ``rasterio.Env`` (never process-wide):
  timeouts, no retries, no sidecar files, and the egress proxy that re-checks every hop GDAL
  makes on its own (redirects included);
- ``GuardedReader``: rio-tiler's Reader that opens the GeoTIFF driver only (a VRT can name any
  file or host, whatever its file name says) and refuses reads whose output or source pixels
  exceed the limits, or that name bands the file does not have.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import attr
import httpx
import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rio_tiler.io import Reader

from dinotiles.core.egress import egress_proxy, refused_since
from dinotiles.core.errors import BadInput, Forbidden, NotFound, UpstreamFailure, UpstreamSlow
from dinotiles.core.limits import RequestTooLarge, check_deadline

logger = logging.getLogger("dinotiles")
READ_DRIVERS = "GTiff"
MAX_BLOCK_PIXELS = 4096 * 4096  # one internal tile or strip GDAL must decompress whole, whatever is asked
MAX_REDIRECTS = 3
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
S3_HOST = re.compile(r"^(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])\.s3([.\-][a-z0-9\-]+)*\.amazonaws\.com$")


@dataclass(frozen=True)
class SourcePolicy:
    """What the guarded path allows and how hard it tries: built from the server's settings
    (``Settings.source_policy()``), or by the CLI for a file the operator names."""

    local_roots: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allowed_buckets: tuple[str, ...] = ()
    http_timeout: float = 10.0
    http_connect_timeout: float = 5.0
    revalidate_seconds: float = 60.0
    gdal_cache_mb: int = 64
    max_output_size: int = 2048
    max_read_pixels: int = 100_000_000
    max_scene_patches: int = 100_000_000


class SourceForbidden(Forbidden, PermissionError):
    """The URL is outside the local roots or the allowlists (HTTP 403)."""


class SourceNotFound(NotFound, FileNotFoundError):
    """An allowed source that does not exist (HTTP 404)."""


class SourceUnreadable(BadInput, ValueError):
    """Not a raster we can read: corrupt, not GeoTIFF, unsupported bands, malformed URL (HTTP 400)."""


class UpstreamError(UpstreamFailure, ConnectionError):
    """The remote host failed: refused, unreachable, 403/5xx from the bucket (HTTP 502)."""


class UpstreamTimeout(UpstreamSlow, TimeoutError):
    """The remote host did not answer in time (HTTP 504)."""


# -- the URL itself -------------------------------------------------------------------------
def _host_allowed(host: str, port: int | None, allowed: tuple[str, ...]) -> bool:
    host = host.lower()
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def check_url(url: str, settings: SourcePolicy) -> str:
    """Return what GDAL should open (normalised), or raise before anything is touched."""
    if not url or any(c in url for c in "\x00\r\n\t"):
        raise SourceUnreadable("url is empty or holds control characters")
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError as exc:
        raise SourceUnreadable(f"url is malformed: {exc}") from exc
    if scheme in ("http", "https"):
        if not host or parts.username or parts.password:
            raise SourceUnreadable("http(s) url needs a host and no credentials")
        if not _host_allowed(host, port, settings.allowed_hosts):
            raise SourceForbidden(f"host {parts.netloc.lower()!r} is not in DINOTILES_ALLOWED_HOSTS")
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{port}" if port is not None else ""
        return urlunsplit((scheme, netloc, parts.path, parts.query, ""))
    if scheme == "s3":
        bucket = parts.netloc.lower()
        if not BUCKET_NAME.match(bucket):
            raise SourceUnreadable(f"s3 bucket name {bucket!r} is malformed")
        if bucket not in settings.allowed_buckets:
            raise SourceForbidden(f"bucket {bucket!r} is not in DINOTILES_ALLOWED_BUCKETS")
        return urlunsplit(("s3", bucket, parts.path, "", ""))
    if scheme in ("", "file") and not url.startswith("/vsi"):
        raw = parts.path if scheme == "file" else url
        if not raw.startswith("/"):
            raise SourceForbidden("local paths must be absolute and under DINOTILES_LOCAL_ROOTS")
        real = Path(os.path.realpath(raw))
        roots = [Path(os.path.realpath(r)) for r in settings.local_roots]
        if not any(real == r or real.is_relative_to(r) for r in roots) or str(real).startswith("/vsi"):
            raise SourceForbidden("local path is outside DINOTILES_LOCAL_ROOTS")
        if not real.is_file():
            raise SourceNotFound(f"no file at {url}")
        return str(real)
    raise SourceForbidden(f"url scheme {scheme or url[:5]!r} is not allowed (local path, http(s) or s3 only)")


# -- remote sources: redirects checked hop by hop, identity from the validators ---------------
class Source(str):
    """A checked source: the string is what GDAL opens, ``key`` the identity the cache keys on.

    A ``str`` so that it passes through TiTiler's factories (``path_dependency`` → reader) as a path.
    """

    key: str
    attribution: str
    weak: bool

    def __new__(cls, path: str, key: str, attribution: str = "", weak: bool = False) -> Source:
        obj = super().__new__(cls, path)
        obj.key = key
        obj.attribution = attribution  # who made the imagery, where known (STAC items)
        obj.weak = weak  # no validator (s3, or a host without ETag/Last-Modified): identity comes from the file
        return obj

    @property
    def path(self) -> str:
        return str.__str__(self)

    @classmethod
    def local(cls, path: str) -> Source:
        """A local file named by the operator (CLI): identity from its mtime and size."""
        st = os.stat(path)
        return cls(path, f"{path}:{st.st_mtime_ns}:{st.st_size}")


_PROBES: dict[str, tuple[float, Source]] = {}
_PROBE_LOCK = threading.Lock()


def _http_client(settings: SourcePolicy) -> httpx.Client:
    timeout = httpx.Timeout(settings.http_timeout, connect=settings.http_connect_timeout)
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


def _probe(url: str, settings: SourcePolicy) -> Source:
    """HEAD the URL, following redirects ourselves so every hop meets the allowlist."""
    current = url
    with _http_client(settings) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = client.head(current)
                if response.status_code in (405, 501):  # hosts without HEAD: one byte instead
                    response = client.get(current, headers={"Range": "bytes=0-0"})
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(f"{urlsplit(current).netloc} did not answer within the timeout") from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(f"cannot reach {urlsplit(current).netloc}: {exc}") from exc
            if response.is_redirect:
                target = urljoin(current, response.headers.get("location", ""))
                if urlsplit(target).scheme.lower() not in ("http", "https"):
                    raise SourceForbidden(f"{url} redirects to a non-http location")
                try:
                    current = check_url(target, settings)
                except SourceForbidden as exc:
                    raise SourceForbidden(f"{url} redirects off the allowlist: {exc}") from exc
                continue
            if response.status_code in (404, 410):
                raise SourceNotFound(f"no file at {url} (HTTP {response.status_code})")
            if response.status_code >= 400:
                raise UpstreamError(f"{urlsplit(current).netloc} answered HTTP {response.status_code} for {url}")
            h = response.headers
            weak = not (h.get("etag") or h.get("last-modified"))
            validator = "|".join(h.get(k, "") for k in ("etag", "last-modified", "content-length"))
            return Source(current, f"{current}#{validator}", weak=weak)
    raise SourceForbidden(f"{url} redirects more than {MAX_REDIRECTS} times")


def resolve_source(url: str, settings: SourcePolicy) -> Source:
    """Check ``url`` and name its current version (remote validators revalidated every few seconds)."""
    target = check_url(url, settings)
    if target.startswith(("http://", "https://")):
        now = time.monotonic()
        with _PROBE_LOCK:
            hit = _PROBES.get(target)
        if hit and hit[0] > now:
            return hit[1]
        source = _probe(target, settings)
        if hit and (hit[1].key != source.key or source.weak):
            # the object changed (or, without validators, may have): GDAL must not reuse its cached size and blocks
            forget_remote(hit[1].path)
        with _PROBE_LOCK:
            _PROBES[target] = (now + settings.revalidate_seconds, source)
            while len(_PROBES) > 4096:
                _PROBES.pop(next(iter(_PROBES)))
        return source
    if target.startswith("s3://"):
        return Source(target, target, weak=True)  # completed by dataset_fingerprint once open
    return Source.local(target)


def forget_remote(url: str) -> None:
    """Drop GDAL's /vsicurl/ cache (size, headers, blocks) of one URL, so a changed object is read anew."""
    try:
        import ctypes
        import glob

        import rasterio as rio

        libs = glob.glob(os.path.join(os.path.dirname(rio.__file__) + ".libs", "libgdal*.so*")) or ["libgdal.so"]
        gdal = ctypes.CDLL(libs[0])
        gdal.VSICurlPartialClearCache(("/vsicurl/" + url).encode())
    except (OSError, AttributeError):  # a GDAL without the call: the revalidated key still changes the clusters
        logger.warning("could not clear GDAL's HTTP cache for %s", url)


def dataset_fingerprint(dataset: Any) -> str:
    """Cheap content identity from the TIFF's own layout: a rewritten object changes its block offsets."""
    bits = [str(dataset.width), str(dataset.height), str(dataset.count)]
    for item in ("BLOCK_OFFSET_0_0", "BLOCK_SIZE_0_0"):
        try:
            bits.append(str(dataset.get_tag_item(item, "TIFF", bidx=1)))
        except Exception:  # drivers without the TIFF domain: dimensions alone
            bits.append("")
    return ":".join(bits)


# -- GDAL options, scoped per read ------------------------------------------------------------
def _egress_policy(settings: SourcePolicy) -> Any:
    endpoint = os.environ.get("AWS_S3_ENDPOINT", "").lower()
    endpoint_host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname if endpoint else None

    def allowed(host: str, port: int) -> bool:
        if _host_allowed(host, port, settings.allowed_hosts):
            return True
        if endpoint_host and host == endpoint_host and settings.allowed_buckets:
            return True  # path-style S3 endpoint: the bucket was checked by check_url
        match = S3_HOST.match(host)
        return bool(match and match["bucket"] in settings.allowed_buckets)

    return allowed


def gdal_env(settings: SourcePolicy) -> dict[str, Any]:
    """GDAL options for every read of this app: COG-friendly, bounded in time, through the egress proxy."""
    key = (settings.allowed_hosts, settings.allowed_buckets, settings.http_timeout, settings.http_connect_timeout)
    # the proxy waits longer than GDAL does, so a slow host shows up as GDAL's own timeout (504)
    idle = 2 * settings.http_timeout + 1
    proxy = egress_proxy(key, _egress_policy(settings), idle, settings.http_connect_timeout)
    timeout = str(max(1, math.ceil(settings.http_timeout)))
    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no sidecar (.ovr/.aux.xml/.msk) lookups
        "GDAL_PAM_ENABLED": "NO",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "VSI_CACHE": "TRUE",
        "GDAL_HTTP_TIMEOUT": timeout,
        "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, math.ceil(settings.http_connect_timeout))),
        "GDAL_HTTP_LOW_SPEED_TIME": timeout,
        "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
        "GDAL_HTTP_MAX_RETRY": "0",
        "GDAL_HTTP_PROXY": "{}:{}".format(*proxy.server_address[:2]),
        "GDAL_HTTP_PROXYUSERPWD": proxy.user,  # only this process can use its proxy
        "GDAL_CACHEMAX": settings.gdal_cache_mb * 1024 * 1024,  # bytes (an int); rasterio sets it process-wide
    }


# -- opening ----------------------------------------------------------------------------------
def classify_error(path: str, exc: Exception, started: float | None = None, timeout: float | None = None) -> Exception:
    """A GDAL failure as the error a client can act on: remote trouble is 403/502/504, a bad file 400.

    GDAL reports a remote timeout or a refused redirect as "not recognized as a supported file
    format", so the elapsed time (against GDAL_HTTP_TIMEOUT) and the egress proxy's refusals since
    the read started tell those apart from a file that really is not a GeoTIFF.
    """
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    remote = path.startswith(("http://", "https://", "s3://", "/vsicurl/", "/vsis3/"))
    if remote:
        found = _classify_remote(path, text, started, timeout)
        if found is not None:
            _FAILED[path] = (time.monotonic(), found)
            forget_remote(path)  # GDAL must try again next time, not replay a cached failure
            return found
        recent = _FAILED.get(path)
        if recent and time.monotonic() - recent[0] < 2 * (timeout or 10):
            # GDAL answered from its cache of a failure it saw moments ago: the same failure, not a bad file
            return type(recent[1])(str(recent[1]))
    name = path.rsplit("/", 1)[-1]
    return SourceUnreadable(f"cannot read {name} as a GeoTIFF: {_without_local_paths(text, path)}")


_FAILED: dict[str, tuple[float, Exception]] = {}  # recent upstream failures by URL (bounded below)


def _classify_remote(path: str, text: str, started: float | None, timeout: float | None) -> Exception | None:
    """The upstream failure a remote read's error means, or None if the file itself is at fault."""
    if len(_FAILED) > 1024:
        _FAILED.clear()
    lower = re.sub(r"'[^']*'", "", text).lower()  # GDAL quotes the file name: match the message, not the URL
    name = path.rsplit("/", 1)[-1]
    refused = refused_since(started) if started is not None else []
    if refused:
        return SourceForbidden(f"reading {name} led to {', '.join(refused)}, which is not allowed (a redirect?)")
    elapsed = time.monotonic() - started if started is not None else 0.0
    if "timed out" in lower or "timeout" in lower or (timeout and elapsed >= 0.9 * timeout):
        return UpstreamTimeout(f"reading {path} timed out after {elapsed:.1f} s (GDAL_HTTP_TIMEOUT)")
    code = re.search(r"HTTP response code: (\d+)", text)
    if code and code[1] in ("404", "410"):
        return SourceNotFound(f"no file at {path} (HTTP {code[1]})")
    network = ("resolve", "connect", "refused", "curl error", "ssl", "reset by peer", "empty reply")
    if code or any(s in lower for s in network):
        return UpstreamError(f"reading {path} failed upstream: {_without_local_paths(text, path)}")
    return None


def _without_local_paths(text: str, path: str) -> str:
    """GDAL's messages may name files of the server (``/root/.aws/credentials``): keep only the source's name."""
    return re.sub(r"(?<![\w.:])/(?:[\w.\-]+/)+[\w.\-]*", lambda m: m[0] if m[0] in path else "<path>", text)


def open_dataset(path: str, timeout: float | None = None) -> rasterio.DatasetReader:
    """Open GeoTIFFs only, with georeferencing: a VRT could point GDAL at any file or host."""
    if path.startswith("/vsi"):
        raise SourceForbidden("GDAL virtual file systems are not allowed")
    started = time.monotonic()
    try:
        dataset = rasterio.open(path, driver=READ_DRIVERS)
    except RasterioError as exc:
        raise classify_error(path, exc, started, timeout) from exc
    if dataset.crs is None or dataset.transform.is_identity:
        dataset.close()
        raise SourceUnreadable("the raster has no georeferencing (CRS and transform)")
    rows, cols = max(dataset.block_shapes, key=lambda b: b[0] * b[1])
    if rows * cols > MAX_BLOCK_PIXELS:
        dataset.close()
        raise SourceUnreadable(
            f"the file stores {cols}x{rows} px blocks: any read decompresses a whole block; "
            "retile it (a COG with 256-1024 px tiles)"
        )
    return dataset


def _output_shape(
    src_w: float, src_h: float, width: int | None, height: int | None, max_size: int | None
) -> tuple[int, int]:
    """The (width, height) rio-tiler will produce for these options."""
    if width and height:
        return width, height
    if width:
        return width, max(1, math.ceil(width * src_h / max(src_w, 1e-9)))
    if height:
        return max(1, math.ceil(height * src_w / max(src_h, 1e-9))), height
    w, h = max(1, math.ceil(src_w)), max(1, math.ceil(src_h))
    if max_size and max(w, h) > max_size:
        ratio = max_size / max(w, h)
        return max(1, round(w * ratio)), max(1, round(h * ratio))
    return w, h


@attr.s
class GuardedReader(Reader):
    """rio-tiler's Reader through the guarded path: GeoTIFF driver only, output and reads bounded.

    TiTiler builds readers as ``reader(url, tms=…)``, so the policy is a class attribute:
    ``guarded_reader(policy)`` makes the subclass an app uses. GDAL's options (timeouts, the
    egress proxy) hold from the open until the reader closes.
    """

    policy: ClassVar[SourcePolicy] = SourcePolicy()

    def __attrs_post_init__(self) -> None:
        started = time.monotonic()
        try:
            if self.dataset is None:
                self._ctx_stack.enter_context(rasterio.Env(**gdal_env(self.policy)))
                self.dataset = self._ctx_stack.enter_context(open_dataset(str(self.input), self.policy.http_timeout))
            super().__attrs_post_init__()  # rio-tiler reads overviews and the colormap here: remote reads too
        except RasterioError as exc:
            self._ctx_stack.close()
            raise classify_error(str(self.input), exc, started, self.policy.http_timeout) from exc

    @property
    def _ds(self) -> Any:
        return self.dataset

    # -- checks ---------------------------------------------------------------------------
    def _check_bands(self, indexes: Any, expression: str | None) -> None:
        count = self._ds.count
        wanted = [indexes] if isinstance(indexes, int) else list(indexes or [])
        if expression:
            wanted += [int(b) for b in re.findall(r"\bb(\d+)\b", expression)]
        bad = [i for i in wanted if not 1 <= int(i) <= count]
        if bad:
            raise SourceUnreadable(f"band(s) {bad} out of range: the raster has bands 1..{count}")

    def _check_size(
        self, src_w: float, src_h: float, width: Any, height: Any, max_size: Any, buffer: Any = None
    ) -> None:
        out_w, out_h = _output_shape(src_w, src_h, width, height, max_size)
        pad = 2 * math.ceil(float(buffer or 0))  # rio-tiler adds `buffer` pixels on every side
        if pad < 0:
            raise SourceUnreadable("buffer must not be negative")
        out_w, out_h = out_w + pad, out_h + pad
        limit = self.policy.max_output_size
        if out_w > limit or out_h > limit:
            raise RequestTooLarge(
                f"output of {out_w}x{out_h} px is over the limit of {limit} px a side (DINOTILES_MAX_OUTPUT_SIZE)"
            )
        decimation = max(src_w / out_w, src_h / out_h, 1.0)
        factors = [1, *self._ds.overviews(1)] if hasattr(self.dataset, "overviews") else [1]
        factor = max(f for f in factors if f <= decimation * 1.2)
        touched = (src_w / factor) * (src_h / factor)
        if touched > self.policy.max_read_pixels:
            raise RequestTooLarge(
                f"this read would touch {touched:,.0f} source pixels, over DINOTILES_MAX_READ_PIXELS="
                f"{self.policy.max_read_pixels:,} (the file lacks overviews for this scale: make it a COG)"
            )

    def _guarded(self, call: Any) -> Any:
        check_deadline("reading the source")
        started = time.monotonic()
        try:
            return call()
        except RasterioError as exc:
            raise classify_error(str(self.input), exc, started, self.policy.http_timeout) from exc

    # -- rio-tiler's reads (tile, feature → part; preview, statistics → read) -----------------
    def part(self, bbox: Any, *args: Any, **kwargs: Any) -> Any:
        self._check_bands(kwargs.get("indexes"), kwargs.get("expression"))
        bounds_crs = kwargs.get("bounds_crs") or rasterio.crs.CRS.from_epsg(4326)
        try:
            left, bottom, right, top = transform_bounds(bounds_crs, self._ds.crs, *bbox, densify_pts=21)
        except Exception as exc:
            raise SourceUnreadable(f"bbox {bbox} cannot be placed on the raster: {exc}") from exc
        res_x, res_y = abs(self._ds.transform.a), abs(self._ds.transform.e)
        if not all(map(math.isfinite, (left, bottom, right, top))):
            raise SourceUnreadable("bbox lies outside the raster's coordinate system")
        src_w = min((right - left) / res_x, self._ds.width * 4.0)
        src_h = min((top - bottom) / res_y, self._ds.height * 4.0)
        self._check_size(
            src_w, src_h, kwargs.get("width"), kwargs.get("height"), kwargs.get("max_size"), kwargs.get("buffer")
        )
        return self._guarded(lambda: super(GuardedReader, self).part(bbox, *args, **kwargs))

    def read(self, *args: Any, **kwargs: Any) -> Any:
        self._check_bands(kwargs.get("indexes"), kwargs.get("expression"))
        self._check_size(
            self._ds.width, self._ds.height, kwargs.get("width"), kwargs.get("height"), kwargs.get("max_size")
        )
        return self._guarded(lambda: super(GuardedReader, self).read(*args, **kwargs))

    def point(self, *args: Any, **kwargs: Any) -> Any:
        self._check_bands(kwargs.get("indexes"), kwargs.get("expression"))
        return self._guarded(lambda: super(GuardedReader, self).point(*args, **kwargs))

    def info(self) -> Any:
        return self._guarded(lambda: super(GuardedReader, self).info())


def guarded_reader(policy: SourcePolicy) -> type[GuardedReader]:
    """A GuardedReader class bound to one app's policy (TiTiler instantiates the class itself)."""
    return type("AppGuardedReader", (GuardedReader,), {"policy": policy})


# -- bands ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandPlan:
    """How a source becomes 8-bit RGB: which bands, and a fixed per-source rescale.

    1 band → grey repeated to RGB; 3+ bands → the R, G, B colour bands (else 1-3);
    non-uint8 → linear 2nd-98th percentile stretch measured once on a decimated read,
    so every window of a source is scaled the same way.
    """

    indexes: tuple[int, int, int]
    low: tuple[float, float, float] | None = None
    high: tuple[float, float, float] | None = None

    def to_uint8(self, data: np.ndarray) -> np.ndarray:
        if self.low is None or self.high is None:
            return data.astype(np.uint8, copy=False)
        lo = np.array(self.low, np.float32)[:, None, None]
        hi = np.array(self.high, np.float32)[:, None, None]
        scaled = (data.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-6) * 255.0
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def band_plan(dataset: rasterio.DatasetReader) -> BandPlan:
    """Choose RGB bands and a stretch; refuse what cannot be shown as colour."""
    from rasterio.enums import ColorInterp

    interp = list(dataset.colorinterp)
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if not data_bands:
        raise SourceUnreadable("the raster has no data bands")
    if len(data_bands) == 2:
        raise SourceUnreadable("2-band rasters are ambiguous: give 1 (grey) or 3+ (RGB) bands")
    if len(data_bands) == 1:
        indexes = (data_bands[0],) * 3
    else:
        named = {c: i + 1 for i, c in enumerate(interp)}
        rgb = [named.get(c) for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
        indexes = tuple(rgb) if all(rgb) else tuple(data_bands[:3])  # type: ignore[assignment]
    dtype = np.dtype(dataset.dtypes[indexes[0] - 1])
    if dtype == np.uint8:
        return BandPlan(indexes=indexes)  # type: ignore[arg-type]
    if dtype.kind not in "uif":
        raise SourceUnreadable(f"unsupported pixel type {dtype}")
    scale = max(1, max(dataset.width, dataset.height) // 1024)
    try:
        sample = dataset.read(
            list(indexes), out_shape=(3, max(1, dataset.height // scale), max(1, dataset.width // scale)), masked=True
        )
    except RasterioError as exc:
        raise classify_error(dataset.name, exc) from exc
    lows, highs = [], []
    for band in sample:
        values = band.compressed()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise SourceUnreadable("the raster holds no valid pixels")
        lo, hi = np.percentile(values, [2, 98])
        lows.append(float(lo))
        highs.append(float(hi if hi > lo else lo + 1))
    return BandPlan(indexes=indexes, low=tuple(lows), high=tuple(highs))  # type: ignore[arg-type]
