"""Least-recently-used trimming shared by the encoder's caches."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


def trim_least_recent(entries: OrderedDict, max_bytes: int, size_of: Callable) -> None:
    """Drop the least recently used of ``entries`` (oldest first in the dict) once the newer ones hold more than
    ``max_bytes`` by ``size_of(value)``. The newest entry always stays, even alone over the budget.

    >>> d = OrderedDict(a=3, b=3, c=3)
    >>> trim_least_recent(d, 6, lambda v: v); list(d)
    ['b', 'c']
    >>> trim_least_recent(d, 1, lambda v: v); list(d)
    ['c']
    """
    total = 0
    for i, key in enumerate(reversed(list(entries))):
        total += size_of(entries[key])
        if i > 0 and total > max_bytes:
            del entries[key]
