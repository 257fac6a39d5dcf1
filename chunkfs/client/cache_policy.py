"""Which cached chunks to drop: a segmented LRU, shared by the memory and the disk tier.

A key enters the *probation* segment; a key used again moves to the *protected* segment, which
holds at most `protected_share` of the capacity (its least recent keys fall back to probation).
Eviction takes probation's least recent key first, so one pass over a big file (a scan, a
backup, a copy) cannot push out the chunks that are read again and again: recency and
frequency both count, at the cost of two ordered dicts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SegmentedLru(Generic[K]):
    def __init__(self, capacity_bytes: int, protected_share: float = 0.8) -> None:
        self.capacity_bytes = capacity_bytes
        self.protected_bytes_max = int(capacity_bytes * protected_share)
        self.size_bytes = 0
        self._probation: OrderedDict[K, int] = OrderedDict()
        self._protected: OrderedDict[K, int] = OrderedDict()
        self._protected_bytes = 0

    def __contains__(self, key: K) -> bool:
        return key in self._probation or key in self._protected

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def keys(self) -> list[K]:
        """Every key, the next to be evicted first."""
        return [*self._probation, *self._protected]

    def touch(self, key: K) -> None:
        """`key` was used again: it is protected now (or again the most recent protected key)."""
        if key in self._protected:
            self._protected.move_to_end(key)
            return
        size = self._probation.pop(key, None)
        if size is None:
            return
        self._protected[key] = size
        self._protected_bytes += size
        while self._protected_bytes > self.protected_bytes_max and len(self._protected) > 1:
            demoted, demoted_size = self._protected.popitem(last=False)
            self._protected_bytes -= demoted_size
            self._probation[demoted] = demoted_size

    def add(self, key: K, size_bytes: int) -> list[K]:
        """Count `key` (new, on probation) and return the keys evicted to make room for it. The
        key just added is never among them, so one entry larger than the capacity still fits."""
        if key in self:
            self.remove(key)
        self._probation[key] = size_bytes
        self.size_bytes += size_bytes
        evicted = []
        while self.size_bytes > self.capacity_bytes and len(self) > 1:
            segment = self._probation if len(self._probation) > 1 or not self._protected else self._protected
            victim = next(iter(segment))
            if victim == key:
                victim = next(iter(self._protected))
            self.remove(victim)
            evicted.append(victim)
        return evicted

    def remove(self, key: K) -> int | None:
        """Forget `key`; returns its size, or None if it was not there."""
        size = self._probation.pop(key, None)
        if size is None:
            size = self._protected.pop(key, None)
            if size is None:
                return None
            self._protected_bytes -= size
        self.size_bytes -= size
        return size
