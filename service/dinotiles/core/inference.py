"""One inference queue per process: windows from concurrent requests share encoder batches.

Why a queue rather than each request calling the encoder: one encoder run already uses every core
(or the whole GPU), so running several at once only multiplies memory, while a GPU (and, less so,
a CPU) does more windows per second in larger batches. Requests read their windows in their own
threads (GDAL releases the GIL) and hand each one here as soon as it is read, so reading the next
window overlaps with encoding the last; one worker thread takes up to ``max_batch`` windows,
waiting at most ``wait_ms`` for a batch to fill, and runs the encoder.

The queue is bounded: a request first *reserves* the windows it will submit; past ``max_queue``
windows reserved, a request (never background work, which waits) gets 503 at once, before any
pixel is read. A request that passes its deadline cancels the windows it queued, so abandoned
work never reaches the encoder.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dinotiles.core.limits import DeadlineExceeded, Overloaded, release_free_memory, remaining

logger = logging.getLogger("dinotiles.inference")


class WindowEncoder(Protocol):
    """What the queue needs of an encoder backend (ONNX Runtime, torch)."""

    providers: list[str]
    seconds: float

    def cluster_ids(self, images: np.ndarray) -> np.ndarray: ...

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class _Item:
    kind: str  # "ids" or "features": batched separately
    image: np.ndarray
    future: Future[Any] = field(default_factory=Future)


class InferenceQueue:
    """Batches windows across requests for one encoder; bounded, deadline-aware, one worker."""

    def __init__(self, encoder: WindowEncoder, max_queue: int, max_batch: int = 8, wait_ms: float = 2.0) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.encoder = encoder
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self._items: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self.reserved = 0  # windows admitted and not yet done: the queue depth /metrics reports
        self.rejected = 0  # requests refused with 503
        self.windows_encoded = 0
        self.batch_sizes: dict[int, int] = {}  # encoder runs by batch size

    # -- admission --------------------------------------------------------------------------
    @contextmanager
    def reserve(self, windows: int) -> Iterator[Ticket]:
        """Admit ``windows`` windows or raise Overloaded (503); released when the block ends."""
        in_request = remaining() is not None  # background jobs and the CLI wait; only requests are refused
        with self._cv:
            if in_request and self.reserved and self.reserved + windows > self.max_queue:  # one alone always runs
                self.rejected += 1
                raise Overloaded(
                    f"the inference queue is full ({self.reserved} windows queued, DINOTILES_MAX_QUEUE="
                    f"{self.max_queue}); retry shortly"
                )
            self.reserved += windows
        ticket = Ticket(self, windows)
        try:
            yield ticket
        finally:
            ticket.close()

    def _release(self, windows: int) -> None:
        with self._cv:
            self.reserved -= windows
            idle = self.reserved == 0
        if idle:
            release_free_memory()

    # -- the worker ---------------------------------------------------------------------------
    def _put(self, item: _Item) -> None:
        with self._cv:
            self._items.append(item)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="dinotiles-inference", daemon=True)
                self._worker.start()
            self._cv.notify()

    def _take(self) -> list[_Item]:
        """Wait for work; then up to max_batch items of the head's kind, after at most wait_s for more."""
        with self._cv:
            while not self._items:
                self._cv.wait()
            until = time.monotonic() + self.wait_s
            while len(self._items) < self.max_batch and (left := until - time.monotonic()) > 0:
                self._cv.wait(left)
            kind = self._items[0].kind
            batch: list[_Item] = []
            kept: deque[_Item] = deque()
            while self._items and len(batch) < self.max_batch:
                item = self._items.popleft()
                if item.kind != kind:
                    kept.append(item)
                elif item.future.set_running_or_notify_cancel():  # False: its request gave up
                    batch.append(item)
            self._items.extendleft(reversed(kept))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            try:
                images = np.stack([item.image for item in batch])
                if batch[0].kind == "ids":
                    ids = self.encoder.cluster_ids(images)
                    results: list[Any] = list(ids)
                else:
                    patches, cls = self.encoder.features(images)
                    results = [(patches[n], cls[n]) for n in range(len(batch))]
            except Exception as exc:  # the requests get the error; the worker lives on
                logger.exception("encoder run failed")
                for item in batch:
                    item.future.set_exception(exc)
                continue
            with self._cv:
                self.windows_encoded += len(batch)
                self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
            for item, result in zip(batch, results, strict=True):
                item.future.set_result(result)

    @property
    def waiting(self) -> int:
        """Windows read and waiting for the encoder now."""
        return len(self._items)


class Ticket:
    """A request's admitted windows: submit each as it is read, then wait for the results."""

    def __init__(self, queue: InferenceQueue, windows: int) -> None:
        self.queue = queue
        self.left = windows
        self.futures: list[Future[Any]] = []

    def submit(self, image: np.ndarray, kind: str = "ids") -> Future[Any]:
        if self.left <= 0:
            raise RuntimeError("more windows submitted than reserved")
        item = _Item(kind, image)
        self.futures.append(item.future)
        self.queue._put(item)
        return item.future

    def result(self, future: Future[Any]) -> Any:
        """The encoder's output for one window; past the request's deadline, cancel the rest (504)."""
        try:
            left = remaining()
            return future.result(timeout=None if left is None else max(0.0, left))
        except (FutureTimeout, CancelledError):
            for other in self.futures:
                other.cancel()
            raise DeadlineExceeded(
                "the request waited for the encoder past its deadline "
                "(DINOTILES_TILE_TIMEOUT / DINOTILES_REQUEST_TIMEOUT)"
            ) from None

    def done(self, windows: int = 1) -> None:
        """Give back admitted windows that need no encoding (blank, or found in a cache meanwhile)."""
        windows = min(windows, self.left)
        self.left -= windows
        self.queue._release(windows)

    def close(self) -> None:
        for future in self.futures:
            future.cancel()  # only those not yet running: nobody is waiting for them any more
        if self.left:
            self.done(self.left)
