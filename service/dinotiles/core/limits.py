"""Bounds on one request's work, checked before the work starts, and the errors that say which bound.

Three mechanisms every route shares:
- a **deadline** per request (a context variable the middleware sets; the engine checks it between
  reads and encodes, so a request whose client has given up stops using the CPU);
- **backpressure**: the inference queue (``dinotiles.core.inference``) admits at most ``max_queue``
  windows; past that new work is refused at once with ``Overloaded`` (503 + Retry-After);
- **area on the sphere**, computed from the bbox's latitude band and longitude span, so a whole-world
  or antimeridian-crossing bbox cannot slip under an area limit.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dinotiles.core.errors import BadInput, Unavailable, UpstreamSlow

AUTHALIC_RADIUS_M = 6_371_007.181  # sphere with the WGS84 ellipsoid's surface area


class RequestTooLarge(BadInput, ValueError):
    """The request would need more work or output than a configured limit allows (HTTP 400)."""


class Overloaded(Unavailable, RuntimeError):
    """The inference queue is full: try again shortly (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(UpstreamSlow, TimeoutError):
    """The request ran past DINOTILES_REQUEST_TIMEOUT (HTTP 504)."""


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dinotiles_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Give the code inside (and the threads it hands work to, via contextvars) ``seconds`` to finish.

    Nested deadlines only shorten: a tile's own timeout never extends the request's.
    """
    end = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before this request's deadline, or None outside a request."""
    end = _deadline.get()
    return None if end is None else end - time.monotonic()


def check_deadline(what: str = "the request") -> None:
    """Stop work that nobody will receive: raise once the deadline has passed."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(
            f"{what} did not finish within its deadline (DINOTILES_TILE_TIMEOUT / DINOTILES_REQUEST_TIMEOUT)"
        )


_TRIMMED = [0.0]


def release_free_memory(every: float = 1.0) -> None:
    """Hand freed heap pages back to the OS once a burst is over (glibc keeps them per thread arena).

    Without it a burst of concurrent tiles leaves the process at its peak size for good, although
    the memory is free; at most once a second, and a no-op where glibc is absent.
    """
    now = time.monotonic()
    if now - _TRIMMED[0] < every:
        return
    _TRIMMED[0] = now
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def bbox_area_m2(bbox: tuple[float, float, float, float]) -> float:
    """Area of an EPSG:4326 bbox on the authalic sphere; minx > maxx means it crosses the antimeridian.

    Exact for a lon/lat box (R² · Δλ · Δsin φ), so a box from -180 to 180 or touching a pole
    gets its true area, unlike a polygon whose first and last meridians coincide.
    """
    left, bottom, right, top = bbox
    span = right - left if right >= left else right + 360.0 - left
    span = min(max(span, 0.0), 360.0)
    band = math.sin(math.radians(min(90.0, top))) - math.sin(math.radians(max(-90.0, bottom)))
    return AUTHALIC_RADIUS_M**2 * math.radians(span) * max(band, 0.0)


def split_antimeridian(bbox: tuple[float, float, float, float]) -> list[tuple[float, float, float, float]]:
    """A bbox crossing the antimeridian (minx > maxx, as STAC writes it) as its two halves."""
    left, bottom, right, top = bbox
    if left <= right:
        return [bbox]
    return [(left, bottom, 180.0, top), (-180.0, bottom, right, top)]


class BadRequest(BadInput, ValueError):
    """A parameter the client got wrong (HTTP 400)."""


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` in EPSG:4326 degrees; minx > maxx means the box crosses the antimeridian."""
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise BadRequest(f"bbox must be 4 numbers, got {text[:100]!r}") from exc
    if len(v) != 4 or not all(map(math.isfinite, v)):
        raise BadRequest("bbox must be 4 finite numbers: minx,miny,maxx,maxy")
    if not (-180 <= v[0] <= 180 and -180 <= v[2] <= 180 and -90 <= v[1] <= 90 and -90 <= v[3] <= 90):
        raise BadRequest("bbox must be in EPSG:4326 degrees")
    if not (v[1] < v[3] and v[0] != v[2]):
        raise BadRequest("bbox must have miny < maxy and minx != maxx (minx > maxx crosses the antimeridian)")
    return (v[0], v[1], v[2], v[3])


@dataclass(frozen=True)
class RequestLimits:
    """How much inference one request may cause (the server's settings fill it in)."""

    max_windows: int = 36  # per tile, with the blending ring: sets minzoom
    max_request_windows: int = 121  # per statistics/point request
    max_stats_area_m2: float = 500_000.0
