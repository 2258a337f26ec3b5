"""STAC items: their URL, fetching them through the URL guard, and the raster asset to tile."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from dinotiles.core.sources import SourcePolicy, check_url
from dinotiles.stac.client import StacBadRequest, StacTimeout, StacUpstreamError

RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "application/x-geotiff")


def item_href(item: dict[str, Any], stac_url: str) -> str:
    """The item's own URL: its self link, else the API's items route."""
    for link in item.get("links", []):
        if link.get("rel") == "self" and link.get("href", "").startswith("http"):
            return str(link["href"])
    return f"{stac_url.rstrip('/')}/collections/{item.get('collection')}/items/{item.get('id')}"


def with_stac_host(settings: SourcePolicy, stac_url: str) -> SourcePolicy:
    """The configured STAC API's host may always be read (its items, not arbitrary URLs)."""
    parts = urlsplit(stac_url)
    host = parts.netloc.lower()
    if host in settings.allowed_hosts:
        return settings
    return replace(settings, allowed_hosts=(*settings.allowed_hosts, host))


class ItemCache:
    """Fetched item JSON by URL, kept a few minutes: tiles of one item fetch it once."""

    def __init__(self, ttl: float = 300.0, size: int = 256) -> None:
        self.ttl, self.size = ttl, size
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, policy: SourcePolicy, stac_url: str, timeout: float) -> dict[str, Any]:
        with self._lock:
            hit = self._items.get(url)
            if hit and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
        item = fetch_item(url, with_stac_host(policy, stac_url), timeout)
        with self._lock:
            self._items[url] = (time.monotonic(), item)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item


MAX_ITEM_BYTES = 10 * 1024 * 1024  # a STAC item is a few KB; anything near this is an attack


def fetch_item(url: str, policy: SourcePolicy, timeout: float) -> dict[str, Any]:
    """The item JSON at ``url`` (guarded like any source, no redirects followed, bounded in bytes and time)."""
    checked = check_url(url, policy)
    try:
        if checked.startswith("http"):
            item = json.loads(_bounded_get(checked, timeout))
        else:
            with open(checked, "rb") as fh:
                raw = fh.read(MAX_ITEM_BYTES + 1)
            if len(raw) > MAX_ITEM_BYTES:
                raise StacBadRequest(f"{url} is over {MAX_ITEM_BYTES} bytes: not a STAC item")
            item = json.loads(raw)
    except StacBadRequest:
        raise
    except httpx.TimeoutException as exc:
        raise StacTimeout(f"item {url} did not arrive within {timeout} s") from exc
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


def _bounded_get(url: str, timeout: float) -> bytes:
    """GET at most MAX_ITEM_BYTES within ``timeout`` seconds in all (httpx's own timeout is per read)."""
    deadline = time.monotonic() + timeout
    client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
    with client, client.stream("GET", url) as response:
        response.raise_for_status()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ITEM_BYTES:
            raise StacBadRequest(f"{url} is {declared} bytes: not a STAC item")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_ITEM_BYTES:
                raise StacBadRequest(f"{url} is over {MAX_ITEM_BYTES} bytes: not a STAC item")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"{url} took longer than {timeout} s")
    return bytes(body)


def absolute_href(href: str, item_url: str | None) -> str:
    """An asset href as an absolute URL or path, relative ones resolved against the item's own location.

    Static catalogs write ``./image.tif``; rio-tiler's STAC reader resolves them the same way
    (pystac's ``make_absolute_href``).
    """
    remote_item = bool(item_url) and urlsplit(item_url or "").scheme.lower() in ("http", "https", "s3")
    local_href = not urlsplit(href).scheme or urlsplit(href).scheme.lower() == "file"
    if remote_item and local_href and (href.startswith("/") or urlsplit(href).scheme):
        # a remote item must not choose files of this server, even inside the local roots
        raise StacBadRequest("a remote item's asset must be a URL, not a local path")
    if not item_url or urlsplit(href).scheme or href.startswith("/"):
        return href
    if remote_item:
        return urljoin(item_url, href)
    return os.path.normpath(os.path.join(os.path.dirname(item_url), href))


def attribution(item: dict[str, Any]) -> str:
    """Who made the imagery and under which licence, from STAC common metadata (OAM: CC BY 4.0 + provider)."""
    props = item.get("properties") or {}
    names = [str(p.get("name")) for p in props.get("providers") or [] if isinstance(p, dict) and p.get("name")]
    for key in ("oam:producer_name", "oam:provider", "provider", "producer"):
        if isinstance(props.get(key), str) and props[key] not in names:
            names.append(props[key])
    licence = (
        props.get("license")
        or item.get("license")
        or ("CC BY 4.0" if item.get("collection") == "openaerialmap" else "")
    )
    who = ", ".join(names) or "unknown provider"
    return f"Imagery: {who}" + (f" ({licence})" if licence else "") + " · Clusters: dinotiles"


def raster_asset(item: dict[str, Any], assets: list[str] | None, item_url: str | None = None) -> tuple[str, str]:
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
    return name, absolute_href(str(asset["href"]), item_url)
