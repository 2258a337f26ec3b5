"""Cluster IDs per window (cached, computed once even under concurrent requests) and mosaics of them."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from rio_tiler.io import Reader

from dinotiles.core.bundle import Bundle
from dinotiles.core.cache import ByteLRU
from dinotiles.core.encoder import NODATA, Encoder
from dinotiles.core.grid import BORDER, Grid, WindowPixels, read_window
from dinotiles.core.limits import InferenceGate, RequestTooLarge, check_deadline
from dinotiles.core.shared_cache import SharedCache
from dinotiles.core.sources import BandPlan
from dinotiles.core.timing import span

MIN_WINDOW_VALID = 0.02  # windows with fewer real patches than this are skipped (seed: flat windows)
BATCH = 4


@dataclass
class SourceView:
    """An open source as the engine needs it: reader, grid, bands and cache identity."""

    key: str
    reader: Reader
    grid: Grid
    plan: BandPlan


class ClusterEngine:
    """Maps (source, window) → uint16 cluster IDs of the window's core patches."""

    def __init__(
        self,
        bundle: Bundle,
        encoder: Encoder,
        cache: ByteLRU,
        gate: InferenceGate | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        self.bundle = bundle
        self.encoder = encoder
        self.cache = cache
        self.shared = shared  # Redis behind the LRU, when configured
        self.gate = gate or InferenceGate(max_queue=1 << 30)
        self._inflight: dict[tuple[str, str, int, int], threading.Event] = {}
        self._lock = threading.Lock()
        self.windows_encoded = 0
        self.batch_sizes: dict[int, int] = {}  # encoder runs by batch size, for /metrics

    def _key(self, view: SourceView, ij: tuple[int, int]) -> tuple[str, str, int, int]:
        return (self.bundle.fingerprint, view.key, ij[0], ij[1])

    def window_ids(self, view: SourceView, windows: Iterable[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """IDs [core, core] for each window; misses are encoded in batches, each once."""
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
            todo = self._from_shared(view, mine, out)
            for start in range(0, len(todo), BATCH):
                chunk = todo[start : start + BATCH]
                check_deadline()  # nobody waits for the rest: stop using the CPU
                encoded = list(zip(chunk, self._encode(view, chunk), strict=True))
                for ij, ids in encoded:
                    self.cache.put(self._key(view, ij), ids)
                    out[ij] = ids
                if self.shared is not None:
                    self.shared.put_many([(self._key(view, ij), ids) for ij, ids in encoded])
        finally:
            with self._lock:
                for ij in mine:
                    self._inflight.pop(self._key(view, ij)).set()
        for ij, event in waits:
            while not event.wait(timeout=0.5):
                check_deadline()
            hit = self.cache.get(self._key(view, ij))
            out[ij] = hit if hit is not None else self._encode(view, [ij])[0]
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

    def _encode(self, view: SourceView, windows: list[tuple[int, int]]) -> list[np.ndarray]:
        with span("read"):
            pixels: list[WindowPixels] = [read_window(view.reader, view.plan, view.grid, i, j) for i, j in windows]
        core = slice(BORDER, BORDER + view.grid.core)
        results: list[np.ndarray | None] = [None] * len(windows)
        todo = [k for k, p in enumerate(pixels) if p.valid[core, core].mean() >= MIN_WINDOW_VALID]
        if todo:
            with self.gate.admit(len(todo)):
                ids = self.encoder.cluster_ids(np.stack([pixels[k].image for k in todo]))
            with self._lock:  # several requests encode at once: counts must not be lost
                self.windows_encoded += len(todo)
                self.batch_sizes[len(todo)] = self.batch_sizes.get(len(todo), 0) + 1
            for n, k in enumerate(todo):
                results[k] = np.where(pixels[k].valid, ids[n], NODATA)[core, core].astype(np.uint16)
        blank = np.full((view.grid.core, view.grid.core), NODATA, np.uint16)
        return [r if r is not None else blank for r in results]

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
