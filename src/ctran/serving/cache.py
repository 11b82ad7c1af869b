"""A bounded least-recently-used cache under random ids: what an uploaded image is kept as between requests.

Ids come from ``secrets.token_urlsafe``, so one client cannot guess (or enumerate) another client's images.
A library's images are public to its page anyway and are cached under their own ids (``put``).
The cache is shared by the server's worker threads, hence its own lock.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

ID_BYTES = 16  # 128 random bits: a 22-character url-safe id


class FeatureCache(Generic[T]):
    """At most ``capacity`` values; adding one more drops the one used longest ago."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, value: T) -> str:
        """Store ``value`` under a fresh random id and return the id."""
        key = secrets.token_urlsafe(ID_BYTES)
        self.put(key, value)
        return key

    def put(self, key: str, value: T) -> None:
        """Store ``value`` under a key the caller chose (a library image's id), as the most recently used."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: str) -> T | None:
        """The value, now the most recently used; None when unknown or already evicted."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def pop(self, key: str) -> T | None:
        """Remove and return the value (None when unknown)."""
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
