"""A least-recently-used store with a memory budget, shared by the encoder's caches."""

from __future__ import annotations

from collections import OrderedDict


class SizedLRU:
    """Values by key, each with a size in bytes; the least recently used go once the sizes add up to more than
    ``max_bytes``. The newest entry always stays, even alone over the budget. Every operation is O(1) amortised.

    >>> store = SizedLRU(6)
    >>> for key in "abc":
    ...     store.put(key, key.upper(), 3)
    >>> store.get("a") is None, store.get("b"), len(store), store.total
    (True, 'B', 2, 6)
    >>> store.put("d", "D", 5); list(store.keys())
    ['d']
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.total = 0
        self._entries: OrderedDict = OrderedDict()  # key -> (value, size), least recently used first

    def get(self, key):
        """The value kept under ``key``, now the most recently used; None when there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key, value, size: int) -> None:
        """Keep ``value`` under ``key`` as the most recently used, counted as ``size`` bytes (a value kept again
        is counted anew), then drop the least recently used while the total is over the budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.total -= old[1]
        self._entries[key] = (value, int(size))
        self.total += int(size)
        while self.total > self.max_bytes and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.total -= dropped

    def keys(self):
        return self._entries.keys()

    def clear(self) -> None:
        self._entries.clear()
        self.total = 0

    def __len__(self) -> int:
        return len(self._entries)
