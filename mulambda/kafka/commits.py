"""Which offsets a pipelined consumer may commit: a pure tracker, no Kafka here.

Records of a partition are taken into work in offset order but finish in any order.
Per partition the tracker knows the offsets still in flight, those whose handling
failed (never committed past: the next owner reads them again), the offset after the
last record taken, and what was committed. The commit point is the lowest offset in
flight or failed, else the offset after the last record taken: everything below it
was answered or dead-lettered (at least once).

Partitions are keyed by any hashable value; the consumer uses aiokafka's TopicPartition.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass(slots=True)
class _Partition:
    """What the tracker knows of one partition since it was assigned."""

    fetched: int
    """Offset after the last record taken into work."""
    in_flight: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    committed: int | None = None

    def commit_point(self) -> int:
        held = self.in_flight | self.failed
        return min(held) if held else self.fetched


@dataclass(frozen=True, slots=True)
class Taken(Generic[P]):
    """One record taken into work; hand it back to ``finished`` or ``failed``.

    It belongs to the partition's assignment it was taken in: once that partition was
    revoked, reporting it changes nothing, even if the partition came back meanwhile.
    """

    partition: P
    offset: int
    _state: _Partition


class CommitTracker(Generic[P]):
    """Per partition: offsets in flight and failed, the commit point, what was committed."""

    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}

    def take(self, partition: P, offset: int) -> Taken[P]:
        """Record that ``offset`` of ``partition`` is now being handled."""
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition(fetched=offset + 1)
        state.in_flight.add(offset)
        state.fetched = offset + 1
        return Taken(partition, offset, state)

    def finished(self, taken: Taken[P]) -> None:
        """The record was answered or dead-lettered: it no longer holds the commit point."""
        taken._state.in_flight.discard(taken.offset)

    def failed(self, taken: Taken[P]) -> None:
        """The record could not be finished: it holds the commit point until revoked."""
        if taken.offset in taken._state.in_flight:
            taken._state.in_flight.discard(taken.offset)
            taken._state.failed.add(taken.offset)

    def commit_point(self, partition: P) -> int | None:
        """The offset that may be committed for ``partition``; None when nothing was taken."""
        state = self._partitions.get(partition)
        return None if state is None else state.commit_point()

    def to_commit(self, assigned: Collection[P], only: Collection[P] | None = None) -> dict[P, int]:
        """Commit points of ``assigned`` partitions (within ``only``) that moved past the
        last commit; nothing for a partition before its first record was taken."""
        offsets: dict[P, int] = {}
        for partition, state in self._partitions.items():
            if partition not in assigned or (only is not None and partition not in only):
                continue
            point = state.commit_point()
            if state.committed is None or point > state.committed:
                offsets[partition] = point
        return offsets

    def committed(self, offsets: Mapping[P, int]) -> None:
        """The broker stored ``offsets`` (as returned by :meth:`to_commit`)."""
        for partition, offset in offsets.items():
            state = self._partitions.get(partition)
            if state is not None:
                state.committed = offset

    def last_committed(self, partition: P) -> int | None:
        """What was committed for ``partition`` since it was assigned."""
        state = self._partitions.get(partition)
        return None if state is None else state.committed

    def revoke(self, partitions: Iterable[P]) -> None:
        """Forget ``partitions``: the next owner starts from their last commit."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def in_flight(self, partition: P) -> frozenset[int]:
        """Offsets of ``partition`` being handled now."""
        state = self._partitions.get(partition)
        return frozenset(state.in_flight) if state is not None else frozenset()

    def failed_offsets(self, partition: P) -> frozenset[int]:
        """Offsets of ``partition`` whose handling failed (redelivered to the next owner)."""
        state = self._partitions.get(partition)
        return frozenset(state.failed) if state is not None else frozenset()

    def positions(self) -> dict[P, int]:
        """Per partition, the offset after the last record taken into work (for lag)."""
        return {partition: state.fetched for partition, state in self._partitions.items()}
