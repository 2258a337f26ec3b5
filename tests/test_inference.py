"""The inference queue's mechanics (fast tier): batching across requests, bounds, deadlines, failures.

The encoder here is a stand-in that records its batches and can be held, so that timing-dependent
properties (what ends up in one batch, what a cancelled request still costs) are deterministic;
the real encoders behind the same queue are exercised by the server tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest

from dinotiles.core.inference import InferenceQueue
from dinotiles.core.limits import DeadlineExceeded, Overloaded, deadline


class HeldEncoder:
    """IDs = the window's first pixel value; each run waits for ``gate`` (set = never waits)."""

    def __init__(self) -> None:
        self.providers = ["test"]
        self.seconds = 0.0
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail = False

    def cluster_ids(self, images: np.ndarray) -> np.ndarray:
        self.started.set()
        assert self.gate.wait(10)
        self.batches.append([int(im[0, 0, 0]) for im in images])
        if self.fail:
            raise RuntimeError("device lost")
        return np.broadcast_to(images[:, 0:1, 0:2, 0:2].astype(np.uint16), (len(images), 1, 2, 2))[:, 0]

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append([-int(im[0, 0, 0]) for im in images])
        return np.zeros((len(images), 2, 2, 3), np.float32), images[:, 0, 0, :3].astype(np.float32)


def window(value: int) -> np.ndarray:
    return np.full((3, 4, 4), value, np.uint8)


def run(queue: InferenceQueue, values: list[int], out: dict[int, int], in_request: bool = True) -> None:
    with deadline(10) if in_request else contextlib.nullcontext(), queue.reserve(len(values)) as ticket:
        futures = [(v, ticket.submit(window(v))) for v in values]
        for v, f in futures:
            out[v] = int(ticket.result(f)[0, 0])
            ticket.done()


def test_windows_of_concurrent_requests_share_batches() -> None:
    encoder = HeldEncoder()
    queue = InferenceQueue(encoder, max_queue=100, max_batch=8, wait_ms=0)
    encoder.gate.clear()
    out: dict[int, int] = {}
    first = threading.Thread(target=run, args=(queue, [1], out))
    first.start()
    assert encoder.started.wait(5)  # the worker holds window 1; the next three requests queue up meanwhile
    others = [threading.Thread(target=run, args=(queue, vals, out)) for vals in ([2, 3], [4], [5, 6, 7])]
    for t in others:
        t.start()
    for _ in range(200):
        if queue.waiting == 6:
            break
        time.sleep(0.01)
    encoder.gate.set()
    for t in [first, *others]:
        t.join(10)
    assert out == {v: v for v in range(1, 8)}  # each request got its own windows' results
    assert encoder.batches[0] == [1] and sorted(encoder.batches[1]) == [2, 3, 4, 5, 6, 7]  # one batch, 3 requests
    assert queue.batch_sizes == {1: 1, 6: 1} and queue.windows_encoded == 7 and queue.reserved == 0


def test_batch_size_one_turns_batching_off_and_wait_gathers_a_batch() -> None:
    encoder = HeldEncoder()
    off = InferenceQueue(encoder, max_queue=100, max_batch=1, wait_ms=0)
    out: dict[int, int] = {}
    run(off, [1, 2, 3], out)
    assert encoder.batches == [[1], [2], [3]]
    encoder.batches.clear()
    waiting = InferenceQueue(encoder, max_queue=100, max_batch=4, wait_ms=300)  # one request, four windows
    run(waiting, [4, 5, 6, 7], out)
    assert encoder.batches == [[4, 5, 6, 7]]  # the partial batch waited for the rest of the request's reads


def test_past_max_queue_requests_get_503_and_background_work_waits() -> None:
    encoder = HeldEncoder()
    queue = InferenceQueue(encoder, max_queue=3, max_batch=8, wait_ms=0)
    encoder.gate.clear()
    out: dict[int, int] = {}
    holder = threading.Thread(target=run, args=(queue, [1, 2], out))
    holder.start()
    assert encoder.started.wait(5)
    with pytest.raises(Overloaded) as info, deadline(5), queue.reserve(2):
        pass
    assert "DINOTILES_MAX_QUEUE=3" in str(info.value) and info.value.retry_after > 0
    background = threading.Thread(target=run, args=(queue, [3, 4], out, False))  # no deadline: never refused
    background.start()
    encoder.gate.set()
    holder.join(10)
    background.join(10)
    assert out == {1: 1, 2: 2, 3: 3, 4: 4} and queue.rejected == 1 and queue.reserved == 0


def test_a_request_alone_is_admitted_whatever_its_size() -> None:
    queue = InferenceQueue(HeldEncoder(), max_queue=2, max_batch=8, wait_ms=0)
    out: dict[int, int] = {}
    run(queue, [1, 2, 3, 4, 5], out)  # bigger than the queue, but nothing else is queued: it must not starve
    assert len(out) == 5


def test_past_its_deadline_a_request_cancels_what_it_queued() -> None:
    encoder = HeldEncoder()
    queue = InferenceQueue(encoder, max_queue=100, max_batch=1, wait_ms=0)
    encoder.gate.clear()
    out: dict[int, int] = {}
    holder = threading.Thread(target=run, args=(queue, [1], out))
    holder.start()
    assert encoder.started.wait(5)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded), deadline(0.2), queue.reserve(3) as ticket:
        futures = [ticket.submit(window(v)) for v in (7, 8, 9)]
        ticket.result(futures[0])
    assert time.monotonic() - started < 2
    encoder.gate.set()
    holder.join(10)
    time.sleep(0.2)
    assert encoder.batches == [[1]]  # 7, 8, 9 never reached the encoder
    assert all(f.cancelled() for f in futures) and queue.reserved == 0


def test_an_encoder_failure_reaches_its_requests_and_the_worker_lives_on() -> None:
    encoder = HeldEncoder()
    queue = InferenceQueue(encoder, max_queue=100, max_batch=8, wait_ms=0)
    encoder.fail = True
    with pytest.raises(RuntimeError, match="device lost"):
        run(queue, [1, 2], {})
    encoder.fail = False
    out: dict[int, int] = {}
    run(queue, [3], out)
    assert out == {3: 3} and queue.reserved == 0


def test_feature_requests_are_batched_apart_from_id_requests() -> None:
    encoder = HeldEncoder()
    queue = InferenceQueue(encoder, max_queue=100, max_batch=8, wait_ms=50)
    with queue.reserve(4) as ticket:
        ids = [ticket.submit(window(v)) for v in (1, 2)]
        feats = [ticket.submit(window(v), kind="features") for v in (3, 4)]
        got = [ticket.result(f) for f in ids + feats]
    assert sorted(map(sorted, encoder.batches)) == [[-4, -3], [1, 2]]
    assert got[2][1].tolist() == [3.0, 3.0, 3.0]
