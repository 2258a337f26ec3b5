"""Which URLs may be read (SSRF guard) and how a source is opened and identified."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from service.config import Settings

READ_DRIVERS = "GTiff"
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
}
for _key, _value in GDAL_ENV.items():  # COG-friendly defaults for every read; the environment may override
    os.environ.setdefault(_key, _value)


class SourceForbidden(PermissionError):
    """The URL is outside the local roots or the host allowlist (HTTP 403)."""


class SourceNotFound(FileNotFoundError):
    """An allowed local path that does not exist (HTTP 404)."""


class SourceUnreadable(ValueError):
    """Not a raster we can read: corrupt, not GeoTIFF, unsupported bands (HTTP 400)."""


def _host_allowed(host: str, port: int | None, allowed: tuple[str, ...]) -> bool:
    host = host.lower()
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def check_url(url: str, settings: Settings) -> str:
    """Return what GDAL should open, or raise before anything is touched."""
    if not url or "\x00" in url:
        raise SourceForbidden("url is empty or malformed")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname or not _host_allowed(parts.hostname, parts.port, settings.allowed_hosts):
            raise SourceForbidden(f"host {parts.netloc!r} is not in DINOTILES_ALLOWED_HOSTS")
        return url
    if scheme == "s3":
        bucket = parts.netloc.lower()
        if not _host_allowed(bucket, None, settings.allowed_hosts) and not _host_allowed(
            f"{bucket}.s3.amazonaws.com", None, settings.allowed_hosts
        ):
            raise SourceForbidden(f"bucket {bucket!r} is not in DINOTILES_ALLOWED_HOSTS")
        return url
    if scheme in ("", "file") and not url.startswith("/vsi"):
        path = Path(parts.path if scheme == "file" else url)
        real = Path(os.path.realpath(path))
        roots = [Path(os.path.realpath(r)) for r in settings.local_roots]
        if not any(real == r or real.is_relative_to(r) for r in roots):
            raise SourceForbidden("local path is outside DINOTILES_LOCAL_ROOTS")
        if not real.is_file():
            raise SourceNotFound(f"no file at {url}")
        return str(real)
    raise SourceForbidden(f"url scheme {scheme or url[:5]!r} is not allowed (local path, http(s) or s3 only)")


def source_key(path: str) -> str:
    """Identity for the cache: a changed local file gets new IDs, a URL is itself."""
    if path.startswith(("http://", "https://", "s3://")):
        return path
    st = os.stat(path)
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def open_dataset(path: str) -> rasterio.DatasetReader:
    """Open GeoTIFFs only: a VRT could point GDAL at any host."""
    try:
        dataset = rasterio.open(path, driver=READ_DRIVERS)
    except RasterioIOError as exc:
        raise SourceUnreadable(f"cannot read {path} as a GeoTIFF: {str(exc).splitlines()[0]}") from exc
    if dataset.crs is None or dataset.transform.is_identity:
        dataset.close()
        raise SourceUnreadable("the raster has no georeferencing (CRS and transform)")
    return dataset


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
    sample = dataset.read(
        list(indexes), out_shape=(3, max(1, dataset.height // scale), max(1, dataset.width // scale)), masked=True
    )
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
