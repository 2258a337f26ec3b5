"""Cluster IDs per core block (cached, computed once even under concurrent requests) and mosaics of them.

Window (i, j) is 32 × 32 patches: block (i, j), its 26 × 26 core, plus a 3-patch band on every
side that its eight neighbours' cores hold. With blending on (the default), a patch in that band
is matched on the mean of its features from every window that saw it, so a patch's cluster no
longer jumps where one window's context ends and the next begins (window lines disappear:
docs/consistency.md). What is cached is final: a block's blended IDs (L1 and Redis); the
windows' features are kept in a smaller L1 so a neighbouring block does not encode them again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.errors
from rasterio.windows import Window
from rio_tiler.io import Reader

from dinotiles.core.bundle import Bundle
from dinotiles.core.cache import ByteLRU
from dinotiles.core.encoder import NODATA, assignment_terms, nearest_centroids
from dinotiles.core.grid import BORDER, Grid, WindowPixels, read_window
from dinotiles.core.inference import InferenceQueue, WindowEncoder
from dinotiles.core.limits import RequestTooLarge, check_deadline
from dinotiles.core.shared_cache import SharedCache
from dinotiles.core.sources import BandPlan
from dinotiles.core.timing import span

logger = logging.getLogger("dinotiles.engine")

MIN_WINDOW_VALID = 0.02  # windows with fewer real patches than this are skipped (seed: flat windows)
FEATURE_CACHE_BYTES = 128 * 1024 * 1024  # ~160 windows of float16 features
EMPTY = np.zeros((0, 0, 0), np.float16)  # a window with (almost) no data: no features

Block = tuple[int, int]


MATCHING = "m3"  # how features become IDs: float16, numpy, windows on the ground lattice (bump when that changes)


def fingerprint_for(bundle: Bundle, precision_tag: str, blend: bool) -> str:
    """What cached and precomputed IDs are keyed on: the bundle, the precision, the matching, the blending."""
    return f"{bundle.fingerprint}{precision_tag}-{MATCHING}" + ("-blend" if blend else "")


@dataclass
class SourceView:
    """An open source as the engine needs it: reader, grid, bands and cache identity."""

    key: str
    reader: Reader
    grid: Grid
    plan: BandPlan


class ClusterEngine:
    """Maps (source, block) → uint16 cluster IDs of the block's patches.

    Lookups go L1 (this process) → L2 (Redis, shared by replicas) → the windows' features (L1) →
    the inference queue; a window several requests need at once is encoded by one of them.
    """

    def __init__(
        self,
        bundle: Bundle,
        encoder: WindowEncoder,
        cache: ByteLRU,
        queue: InferenceQueue | None = None,
        shared: SharedCache | None = None,
        blend: bool = True,
        features: ByteLRU | None = None,
        results: Callable[[str], str | None] | None = None,
    ) -> None:
        self.bundle = bundle
        self.encoder = encoder
        self.cache = cache
        self.shared = shared  # Redis behind the LRU, when configured
        self.queue = queue or InferenceQueue(encoder, max_queue=1 << 30)
        self.blend = blend
        self.results = results  # source identity → its precomputed cluster_ids.tif (DINOTILES_RESULTS)
        self._bad_results: dict[str, float] = {}  # href → until when it is not tried again
        self.features = features if features is not None else ByteLRU(FEATURE_CACHE_BYTES)
        self.terms = assignment_terms(bundle.codebook)
        # window → (done, its features once done): waiters take them from here, not from the LRU
        self._inflight: dict[tuple[str, str, int, int], tuple[threading.Event, dict[str, np.ndarray]]] = {}
        self._lock = threading.Lock()
        # reduced-precision features may match differently from fp32 ones, blended IDs from unblended
        # ones: neither ever shares a cache entry with the other
        tag = getattr(encoder, "cache_tag", "")
        self.fingerprint = fingerprint_for(bundle, tag, blend)
        self._window_tag = bundle.fingerprint + tag

    @property
    def windows_encoded(self) -> int:
        return self.queue.windows_encoded

    @property
    def batch_sizes(self) -> dict[int, int]:
        return self.queue.batch_sizes

    # -- which windows a block needs ---------------------------------------------------------
    def sources(self, grid: Grid, block: Block) -> list[Block]:
        """The windows whose patches make up ``block``: itself, and with blending its 8 neighbours."""
        i, j = block
        if not self.blend:
            return [block]
        return [
            (a, b)
            for a in (i - 1, i, i + 1)
            for b in (j - 1, j, j + 1)
            if 0 <= a < grid.window_rows and 0 <= b < grid.window_cols
        ]

    def windows_needed(self, grid: Grid, r0: int, r1: int, c0: int, c1: int) -> int:
        """Inference windows patches [r0:r1, c0:c1] may need when nothing is cached (the request bound)."""
        rows = (r1 - 1) // grid.core - r0 // grid.core + 1
        cols = (c1 - 1) // grid.core - c0 // grid.core + 1
        if self.blend:
            top, left = r0 // grid.core, c0 // grid.core
            rows = min(grid.window_rows, top + rows + 1) - max(0, top - 1)
            cols = min(grid.window_cols, left + cols + 1) - max(0, left - 1)
        return rows * cols

    def worst_case_windows(self, grid: Grid, rows: int, cols: int) -> int:
        """Windows a span of rows × cols patches needs at its worst placement on the block grid."""
        extra = 3 if self.blend else 1  # a span can straddle one more block; blending adds a ring
        return (math.ceil(rows / grid.core) + extra) * (math.ceil(cols / grid.core) + extra)

    # -- blocks --------------------------------------------------------------------------------
    def _key(self, view: SourceView, ij: Block) -> tuple[str, str, int, int]:
        return (self.fingerprint, view.key, ij[0], ij[1])

    def block_ids(
        self, view: SourceView, blocks: Iterable[Block], held: dict[Block, np.ndarray] | None = None
    ) -> dict[Block, np.ndarray]:
        """IDs [core, core] for each block: from L1, else L2, else blended from its windows' features.

        ``held``: window features the caller keeps between calls (a whole-scene pass holds three
        window rows, whatever the feature cache's size); windows encoded here are added to it.
        """
        out: dict[Block, np.ndarray] = {}
        todo: list[Block] = []
        for ij in blocks:
            hit = self.cache.get(self._key(view, ij))
            if hit is not None:
                out[ij] = hit
            else:
                todo.append(ij)
        todo = self._from_shared(view, self._from_results(view, todo, out), out)
        if not todo:
            return out
        held = {} if held is None else held
        needed = sorted({w for ij in todo for w in self.sources(view.grid, ij)} - held.keys())
        held.update(self.window_features(view, needed))
        feats = held
        made = {ij: self._match(view.grid, ij, feats) for ij in todo}
        for ij, ids in made.items():
            self.cache.put(self._key(view, ij), ids)
        if self.shared is not None:
            self.shared.put_many([(self._key(view, ij), ids) for ij, ids in made.items()])
        out.update(made)
        return out

    def _from_shared(self, view: SourceView, blocks: list[Block], out: dict[Block, np.ndarray]) -> list[Block]:
        """Blocks another replica already computed come from Redis; the rest are returned to compute."""
        if self.shared is None or not blocks:
            return blocks
        found = self.shared.get_many([self._key(view, ij) for ij in blocks])
        todo = []
        for ij, ids in zip(blocks, found, strict=True):
            if ids is None or ids.shape != (view.grid.core, view.grid.core):
                todo.append(ij)
            else:
                self.cache.put(self._key(view, ij), ids)
                out[ij] = ids
        return todo

    def _from_results(self, view: SourceView, blocks: list[Block], out: dict[Block, np.ndarray]) -> list[Block]:
        """Blocks of a source ``dinotiles batch`` already rendered (same version, same fingerprint) are
        read from its cluster_ids.tif, whose pixels are this grid's patches: no inference at all.
        A result that cannot be read is logged and skipped for a minute (the blocks are encoded)."""
        from dinotiles.core.errors import DinotilesError
        from dinotiles.core.precomputed import open_ids

        href = self.results(view.key) if self.results is not None and blocks else None
        if href is None or time.monotonic() < self._bad_results.get(href, 0.0):
            return blocks
        core = view.grid.core
        try:
            with open_ids(href) as ds:
                if (ds.height, ds.width) != (view.grid.rows, view.grid.cols):
                    logger.warning("results %s do not match the grid of %s: encoding instead", href, view.key)
                    self._bad_results[href] = time.monotonic() + 60
                    return blocks
                for i, j in blocks:
                    window = Window(j * core, i * core, core, core)
                    ids = ds.read(1, window=window, boundless=True, fill_value=NODATA).astype(np.uint16)
                    self.cache.put(self._key(view, (i, j)), ids)
                    out[(i, j)] = ids
        except (DinotilesError, rasterio.errors.RasterioError) as exc:
            logger.warning("results %s unreadable (%s): encoding instead for a minute", href, exc)
            self._bad_results[href] = time.monotonic() + 60
            return [ij for ij in blocks if ij not in out]
        return []

    def sample_ids(self, view: SourceView, blocks: list[Block]) -> dict[Block, np.ndarray]:
        """IDs of scattered blocks each matched on its own window only: a statistics sample, where a
        ring of neighbours per block would cost up to 9× the windows. Not cached as final IDs."""
        feats = self.window_features(view, blocks)
        return {ij: self._match(view.grid, ij, feats, own_only=True) for ij in blocks}

    def _match(self, grid: Grid, block: Block, feats: dict[Block, np.ndarray], own_only: bool = False) -> np.ndarray:
        """Each patch of ``block``: the validity-weighted mean of its features over the windows that
        hold it (flat weights: measured as good as a taper, docs/consistency.md), then the nearest
        centroid. Patches the block's own window finds invalid, and blocks whose window was skipped,
        stay no-data, as without blending."""
        core, n = grid.core, grid.grid
        own = feats[block]
        ids = np.full((core, core), NODATA, np.uint16)
        if own.size == 0:
            return ids
        acc = np.zeros((core, core, own.shape[-1] - 1), np.float32)
        weight = np.zeros((core, core), np.float32)
        for ij in [block] if own_only else self.sources(grid, block):
            f = feats[ij]
            if f.size == 0:
                continue
            # patch p of window ij lies at block-relative offset (ij - block) * core - BORDER + p
            dr, dc = (ij[0] - block[0]) * core - BORDER, (ij[1] - block[1]) * core - BORDER
            r0, r1, c0, c1 = max(0, dr), min(core, dr + n), max(0, dc), min(core, dc + n)
            part = f[r0 - dr : r1 - dr, c0 - dc : c1 - dc].astype(np.float32)
            w = part[..., -1]
            acc[r0:r1, c0:c1] += part[..., :-1] * w[..., None]
            weight[r0:r1, c0:c1] += w
        valid = own[BORDER : BORDER + core, BORDER : BORDER + core, -1] > 0
        with span("assign"):
            ids[valid] = nearest_centroids(self.terms, acc[valid] / weight[valid][:, None])
        return ids

    # -- windows -------------------------------------------------------------------------------
    def _wkey(self, view: SourceView, ij: Block) -> tuple[str, str, int, int]:
        return (self._window_tag, view.key, ij[0], ij[1])

    def window_features(self, view: SourceView, windows: Iterable[Block]) -> dict[Block, np.ndarray]:
        """float16 [g, g, D + 1] per window (features, then patch validity 0/1), or EMPTY for a
        window with too little data; misses go through the inference queue, each window once."""
        out: dict[Block, np.ndarray] = {}
        mine: list[Block] = []
        waits: list[tuple[Block, threading.Event, dict[str, np.ndarray]]] = []
        for ij in windows:
            key = self._wkey(view, ij)
            hit = self.features.get(key)
            if hit is not None:
                out[ij] = hit
                continue
            with self._lock:
                entry = self._inflight.get(key)
                if entry is None:
                    self._inflight[key] = (threading.Event(), {})
                    mine.append(ij)
                else:
                    waits.append((ij, *entry))
        done: dict[Block, np.ndarray] = {}
        try:
            done = self._encode(view, mine)
            out.update(done)
        finally:
            with self._lock:
                for ij in mine:
                    event, holder = self._inflight.pop(self._wkey(view, ij))
                    if ij in done:
                        holder["features"] = done[ij]
                    event.set()
        for ij, event, holder in waits:
            while not event.wait(timeout=0.5):
                check_deadline()
            found = holder.get("features")
            out[ij] = found if found is not None else self._encode(view, [ij])[ij]  # its owner failed: try ourselves
        return out

    def _encode(self, view: SourceView, windows: list[Block]) -> dict[Block, np.ndarray]:
        """Read each window and queue it for the encoder at once: reading the next overlaps encoding.

        The queue admits all of them before the first read (503 when full), so a request's work is
        bounded before it starts. Features are stored as float16 whether fresh or cached, so a
        block's IDs never depend on which of the two it met.
        """
        if not windows:
            return {}
        core = slice(BORDER, BORDER + view.grid.core)
        out: dict[Block, np.ndarray] = {}
        with self.queue.reserve(len(windows)) as ticket:
            queued = []
            for ij in windows:
                check_deadline()  # nobody waits for the rest: stop reading
                with span("read"):
                    pixels: WindowPixels = read_window(view.reader, view.plan, view.grid, *ij)
                if pixels.valid[core, core].mean() >= MIN_WINDOW_VALID:
                    queued.append((ij, pixels.valid, ticket.submit(pixels.image, kind="features")))
                else:
                    out[ij] = EMPTY
                    ticket.done()
            with span("encode"):  # what this request waited for the queue after its last read
                for ij, valid, future in queued:
                    patches, _ = ticket.result(future)
                    ticket.done()
                    both = np.concatenate([patches, valid[..., None]], axis=-1)
                    out[ij] = both.astype(np.float16)
        for ij, feats in out.items():
            self.features.put(self._wkey(view, ij), feats)
        return out

    def mosaic(self, view: SourceView, r0: int, r1: int, c0: int, c1: int, limit: int | None = None) -> np.ndarray:
        """Cluster IDs for patches [r0:r1, c0:c1] of the source's grid (65535 = no data).

        ``limit`` bounds the windows this call may need; it is checked before any is read.
        """
        grid = view.grid
        needed = self.windows_needed(grid, r0, r1, c0, c1)
        if limit is not None and needed > limit:
            raise RequestTooLarge(f"this request needs {needed} inference windows, over its limit of {limit}")
        out = np.full((r1 - r0, c1 - c0), NODATA, np.uint16)
        for (i, j), ids in self.block_ids(view, grid.windows_for(r0, r1, c0, c1)).items():
            wr0, wc0 = i * grid.core, j * grid.core
            rr0, rr1 = max(r0, wr0), min(r1, wr0 + grid.core)
            cc0, cc1 = max(c0, wc0), min(c1, wc0 + grid.core)
            out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = ids[rr0 - wr0 : rr1 - wr0, cc0 - wc0 : cc1 - wc0]
        return out
