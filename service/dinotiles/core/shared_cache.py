"""Redis behind the in-process LRU: replicas share each other's inference.

Per-window cluster IDs are stored zlib-compressed under
``dinotiles:w:<bundle fingerprint>:<sha1 of the source identity>:<i>:<j>`` with a TTL (Redis'
``maxmemory-policy allkeys-lru`` evicts the coldest when full). Redis is an accelerator, never a
dependency of an answer: when it is down, slow or answers nonsense, the engine computes as if it
were absent, logs that once, counts it, and tries Redis again after a short pause.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
import zlib
from collections.abc import Hashable, Sequence

import numpy as np

logger = logging.getLogger("dinotiles.cache")
HEADER = struct.Struct("<HH")  # rows, cols of the window's core


def encode_ids(ids: np.ndarray) -> bytes:
    return HEADER.pack(*ids.shape) + zlib.compress(np.ascontiguousarray(ids, dtype="<u2").tobytes(), 3)


def decode_ids(blob: bytes) -> np.ndarray:
    try:
        rows, cols = HEADER.unpack_from(blob)
        data = zlib.decompress(blob[HEADER.size :])
    except (struct.error, zlib.error) as exc:
        raise ValueError(f"corrupt cache entry: {exc}") from exc
    if len(data) != rows * cols * 2:
        raise ValueError("corrupt cache entry")
    return np.frombuffer(data, dtype="<u2").reshape(rows, cols).astype(np.uint16)


class SharedCache:
    """A Redis L2 for window IDs; every failure degrades to 'miss' (and is counted), never to an error."""

    def __init__(self, url: str, ttl_seconds: int = 7 * 24 * 3600, timeout: float = 0.25, pause: float = 5.0) -> None:
        import redis

        self.url = url
        self.ttl = ttl_seconds
        self.pause = pause
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    @staticmethod
    def key(key: Hashable) -> str:
        parts: tuple[object, ...] = tuple(key)  # type: ignore[arg-type]  # (bundle fingerprint, source, i, j)
        fingerprint, source, i, j = parts
        digest = hashlib.sha1(str(source).encode()).hexdigest()[:24]
        return f"dinotiles:w:{fingerprint}:{digest}:{i}:{j}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.pause
            first = not self._down
            self._down = True
        if first:
            logger.warning("redis %s unavailable (%s): serving from memory and compute until it is back", self.url, exc)

    def _ok(self) -> None:
        if self._down:
            with self._lock:
                was, self._down = self._down, False
            if was:
                logger.warning("redis %s is back: sharing windows again", self.url)

    def get_many(self, keys: Sequence[Hashable]) -> list[np.ndarray | None]:
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            blobs: list[bytes | None] = self.client.mget([self.key(k) for k in keys])  # type: ignore[assignment]
        except Exception as exc:  # connection refused, timeout, protocol error: all mean "miss"
            self._failed(exc)
            return [None] * len(keys)
        self._ok()
        out: list[np.ndarray | None] = []
        for blob in blobs:
            try:
                out.append(decode_ids(blob) if blob else None)
            except (ValueError, zlib.error, struct.error):
                out.append(None)
        self.hits += sum(v is not None for v in out)
        self.misses += sum(v is None for v in out)
        return out

    def put_many(self, items: Sequence[tuple[Hashable, np.ndarray]]) -> None:
        if not items or not self.available:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, ids in items:
                pipe.set(self.key(key), encode_ids(ids), ex=self.ttl)
            pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return
        self._ok()
