"""A sorted multiset of floats with an O(log n) median: the view's latency medians and the
learning's pools of learned bases and slopes."""

from __future__ import annotations

from bisect import bisect_left, insort


class SortedFloats:
    """A sorted multiset of floats with an O(log n) median (memmove-cheap updates)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []
        """The members, ascending; read-only for callers."""

    def add(self, value: float) -> None:
        """Insert one value."""
        insort(self.values, value)

    def discard(self, value: float) -> None:
        """Remove one occurrence of ``value``, if present."""
        values = self.values
        i = bisect_left(values, value)
        if i < len(values) and values[i] == value:
            del values[i]

    def replace(self, old: float | None, new: float) -> None:
        """Remove ``old`` (None: nothing) and insert ``new``."""
        if old is not None:
            self.discard(old)
        self.add(new)

    def median(self) -> float | None:
        """The median (mean of the middle two for an even count); None when empty."""
        values = self.values
        n = len(values)
        if n == 0:
            return None
        mid = n // 2
        if n % 2:
            return values[mid]
        return (values[mid - 1] + values[mid]) / 2.0
