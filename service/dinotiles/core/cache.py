"""A bytes-bounded, thread-safe LRU for per-window cluster IDs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

ENTRY_OVERHEAD = 256  # bytes an entry costs beyond its array (key, node, header): empty arrays are not free


class ByteLRU:
    """Evicts least-recently-used arrays once their total size (``nbytes`` + overhead) passes ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        cost = value.nbytes + ENTRY_OVERHEAD
        if cost > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old.nbytes + ENTRY_OVERHEAD
            self._items[key] = value
            self.size += cost
            while self.size > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self.size -= evicted.nbytes + ENTRY_OVERHEAD

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0

    def __len__(self) -> int:
        return len(self._items)
