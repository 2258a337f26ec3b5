"""Cluster IDs per window (cached, computed once even under concurrent requests) and mosaics of them."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from rio_tiler.io import Reader

from dinotiles.core.bundle import Bundle
from dinotiles.core.cache import ByteLRU
from dinotiles.core.encoder import NODATA
from dinotiles.core.grid import BORDER, Grid, WindowPixels, read_window
from dinotiles.core.inference import InferenceQueue, WindowEncoder
from dinotiles.core.limits import RequestTooLarge, check_deadline
from dinotiles.core.shared_cache import SharedCache
from dinotiles.core.sources import BandPlan
from dinotiles.core.timing import span

MIN_WINDOW_VALID = 0.02  # windows with fewer real patches than this are skipped (seed: flat windows)


@dataclass
class SourceView:
    """An open source as the engine needs it: reader, grid, bands and cache identity."""

    key: str
    reader: Reader
    grid: Grid
    plan: BandPlan


class ClusterEngine:
    """Maps (source, window) → uint16 cluster IDs of the window's core patches.

    Lookups go L1 (this process) → L2 (Redis, shared by replicas) → the inference queue, and a
    window several requests need at once is computed by one of them (single flight).
    """

    def __init__(
        self,
        bundle: Bundle,
        encoder: WindowEncoder,
        cache: ByteLRU,
        queue: InferenceQueue | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        self.bundle = bundle
        self.encoder = encoder
        self.cache = cache
        self.shared = shared  # Redis behind the LRU, when configured
        self.queue = queue or InferenceQueue(encoder, max_queue=1 << 30)
        self._inflight: dict[tuple[str, str, int, int], threading.Event] = {}
        self._lock = threading.Lock()
        # IDs from a reduced-precision encoder may differ from fp32 ones: they never share cache entries
        self.fingerprint = bundle.fingerprint + getattr(encoder, "cache_tag", "")

    @property
    def windows_encoded(self) -> int:
        return self.queue.windows_encoded

    @property
    def batch_sizes(self) -> dict[int, int]:
        return self.queue.batch_sizes

    def _key(self, view: SourceView, ij: tuple[int, int]) -> tuple[str, str, int, int]:
        return (self.fingerprint, view.key, ij[0], ij[1])

    def window_ids(self, view: SourceView, windows: Iterable[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """IDs [core, core] for each window; misses go through the inference queue, each once."""
        out: dict[tuple[int, int], np.ndarray] = {}
        mine: list[tuple[int, int]] = []
        waits: list[tuple[tuple[int, int], threading.Event]] = []
        for ij in windows:
            key = self._key(view, ij)
            hit = self.cache.get(key)
            if hit is not None:
                out[ij] = hit
                continue
            with self._lock:
                event = self._inflight.get(key)
                if event is None:
                    self._inflight[key] = threading.Event()
                    mine.append(ij)
                else:
                    waits.append((ij, event))
        try:
            out.update(self._compute(view, self._from_shared(view, mine, out)))
        finally:
            with self._lock:
                for ij in mine:
                    self._inflight.pop(self._key(view, ij)).set()
        for ij, event in waits:
            while not event.wait(timeout=0.5):
                check_deadline()
            hit = self.cache.get(self._key(view, ij))
            out[ij] = hit if hit is not None else self._compute(view, [ij])[ij]  # its owner failed: try ourselves
        return out

    def _from_shared(
        self, view: SourceView, windows: list[tuple[int, int]], out: dict[tuple[int, int], np.ndarray]
    ) -> list[tuple[int, int]]:
        """Windows another replica already encoded come from Redis; the rest are returned to encode."""
        if self.shared is None or not windows:
            return windows
        found = self.shared.get_many([self._key(view, ij) for ij in windows])
        todo = []
        for ij, ids in zip(windows, found, strict=True):
            if ids is None or ids.shape != (view.grid.core, view.grid.core):
                todo.append(ij)
            else:
                self.cache.put(self._key(view, ij), ids)
                out[ij] = ids
        return todo

    def _compute(self, view: SourceView, windows: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """Read each window and queue it for the encoder at once: reading the next overlaps encoding.

        The queue admits all of them before the first read (503 when full), so a request's work is
        bounded before it starts; results go to L1 as they come and to L2 in one round trip.
        """
        if not windows:
            return {}
        core = slice(BORDER, BORDER + view.grid.core)
        blank = np.full((view.grid.core, view.grid.core), NODATA, np.uint16)
        out: dict[tuple[int, int], np.ndarray] = {}
        with self.queue.reserve(len(windows)) as ticket:
            queued = []
            for ij in windows:
                check_deadline()  # nobody waits for the rest: stop reading
                with span("read"):
                    pixels: WindowPixels = read_window(view.reader, view.plan, view.grid, *ij)
                if pixels.valid[core, core].mean() >= MIN_WINDOW_VALID:
                    queued.append((ij, pixels.valid, ticket.submit(pixels.image)))
                else:
                    out[ij] = blank
                    ticket.done()
            with span("encode"):  # what this request waited for the queue after its last read
                for ij, valid, future in queued:
                    ids = ticket.result(future)
                    ticket.done()
                    out[ij] = np.where(valid, ids, NODATA)[core, core].astype(np.uint16)
                    self.cache.put(self._key(view, ij), out[ij])
        for ij, ids in out.items():
            if ids is blank:
                self.cache.put(self._key(view, ij), ids)
        if self.shared is not None:
            self.shared.put_many([(self._key(view, ij), ids) for ij, ids in out.items()])
        return out

    def mosaic(self, view: SourceView, r0: int, r1: int, c0: int, c1: int, limit: int | None = None) -> np.ndarray:
        """Cluster IDs for patches [r0:r1, c0:c1] of the source's grid (65535 = no data).

        ``limit`` bounds the windows this call may need; it is checked before any is read.
        """
        grid = view.grid
        needed = grid.count_windows(r0, r1, c0, c1)
        if limit is not None and needed > limit:
            raise RequestTooLarge(f"this request needs {needed} inference windows, over its limit of {limit}")
        out = np.full((r1 - r0, c1 - c0), NODATA, np.uint16)
        for (i, j), ids in self.window_ids(view, grid.windows_for(r0, r1, c0, c1)).items():
            wr0, wc0 = i * grid.core, j * grid.core
            rr0, rr1 = max(r0, wr0), min(r1, wr0 + grid.core)
            cc0, cc1 = max(c0, wc0), min(c1, wc0 + grid.core)
            out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = ids[rr0 - wr0 : rr1 - wr0, cc0 - wc0 : cc1 - wc0]
        return out
