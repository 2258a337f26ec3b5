"""Where a request's time goes (read, encode, render), for the Server-Timing header.

``encode`` is what the request waited for the shared inference queue (batching with others,
the encoder and the centroid match), after its own reads.

A context variable holds the current request's spans; the engine and encoder add to it when
one is set (the tile route sets it), and cost nothing otherwise.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_spans: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("dinotiles_spans", default=None)


@contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Gather the spans of the code inside: {name: seconds}."""
    spans: dict[str, float] = {}
    token = _spans.set(spans)
    try:
        yield spans
    finally:
        _spans.reset(token)


@contextmanager
def span(name: str) -> Iterator[None]:
    """Add the time spent inside to ``name`` in the current collection, if any."""
    spans = _spans.get()
    if spans is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        spans[name] = spans.get(name, 0.0) + time.perf_counter() - start


def header(spans: dict[str, float]) -> str:
    """``read;dur=12.3, encode;dur=…`` in milliseconds (the Server-Timing syntax)."""
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in spans.items())
