"""STAC API searches: parameters validated here (400 before anything is sent), the API's own
failures mapped to 502 (down, refused, malformed) or 504 (slow), with the cause."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dinotiles.core.errors import BadInput, UpstreamFailure, UpstreamSlow
from dinotiles.core.limits import parse_bbox


class StacBadRequest(BadInput, ValueError):
    """A search or item the client got wrong (400)."""


class StacUpstreamError(UpstreamFailure, RuntimeError):
    """The STAC API is down, refused us or answered nonsense (502)."""


class StacTimeout(UpstreamSlow, TimeoutError):
    """The STAC API did not answer in time (504)."""


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

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout

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
