"""The pipelined consumer's commit tracker: what may be committed while records are in flight."""

from __future__ import annotations

import pytest

from mulambda.kafka import CommitTracker

pytestmark = pytest.mark.unit

A, B = ("requests", 0), ("requests", 1)


def test_nothing_taken_nothing_to_commit() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    assert tracker.commit_point(A) is None
    assert tracker.to_commit({A, B}) == {}
    assert tracker.positions() == {}


def test_records_finishing_out_of_order_commit_up_to_the_oldest_in_flight() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    taken = [tracker.take(A, offset) for offset in (10, 11, 12, 13)]
    assert tracker.commit_point(A) == 10
    assert tracker.positions() == {A: 14}

    tracker.finished(taken[2])  # 12 done: 10 still holds the commit point
    tracker.finished(taken[1])
    assert tracker.in_flight(A) == frozenset({10, 13})
    assert tracker.to_commit({A}) == {A: 10}

    tracker.finished(taken[0])  # 10, 11, 12 done: commit up to 13
    assert tracker.to_commit({A}) == {A: 13}
    tracker.finished(taken[3])  # all done: commit past the last fetched record
    assert tracker.to_commit({A}) == {A: 14}


def test_what_was_committed_is_not_committed_again() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    first = tracker.take(A, 0)
    tracker.finished(first)
    offsets = tracker.to_commit({A})
    assert offsets == {A: 1}
    tracker.committed(offsets)
    assert tracker.last_committed(A) == 1
    assert tracker.to_commit({A}) == {}

    second = tracker.take(A, 1)  # in flight: the point stays at 1, already committed
    assert tracker.to_commit({A}) == {}
    tracker.finished(second)
    assert tracker.to_commit({A}) == {A: 2}


def test_a_commit_the_broker_refused_is_offered_again() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    tracker.finished(tracker.take(A, 5))
    assert tracker.to_commit({A}) == {A: 6}  # not reported committed: the commit failed
    assert tracker.to_commit({A}) == {A: 6}


def test_a_failed_record_holds_the_commit_point() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    done, broken, later = (tracker.take(A, offset) for offset in (0, 1, 2))
    tracker.finished(done)
    tracker.failed(broken)
    tracker.finished(later)
    assert tracker.in_flight(A) == frozenset()
    assert tracker.failed_offsets(A) == frozenset({1})
    # Offset 1 is neither answered nor dead-lettered: the next owner must read it again.
    assert tracker.to_commit({A}) == {A: 1}
    tracker.finished(tracker.take(A, 3))
    assert tracker.to_commit({A}) == {A: 1}


def test_partitions_are_tracked_apart_and_only_assigned_ones_are_committed() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    tracker.finished(tracker.take(A, 7))
    tracker.take(B, 3)  # in flight
    assert tracker.to_commit({A, B}) == {A: 8, B: 3}
    assert tracker.to_commit({A}) == {A: 8}  # B no longer assigned
    assert tracker.to_commit({A, B}, only={B}) == {B: 3}  # a revoke commits just its own


def test_revoke_mid_flight_forgets_the_partition() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    slow = tracker.take(A, 20)
    tracker.finished(tracker.take(A, 21))
    other = tracker.take(B, 0)
    assert tracker.to_commit({A, B}, only={A}) == {A: 20}

    tracker.revoke([A])
    assert tracker.commit_point(A) is None
    assert tracker.to_commit({A, B}) == {B: 0}
    assert tracker.positions() == {B: 1}
    # The straggler finishing after the revoke changes nothing.
    tracker.finished(slow)
    assert tracker.commit_point(A) is None
    tracker.finished(other)
    assert tracker.to_commit({B}) == {B: 1}


def test_reassigned_partition_starts_afresh_and_ignores_the_old_assignment() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    straggler = tracker.take(A, 30)
    tracker.committed({A: 30})
    tracker.revoke([A])

    # Assigned again: the group's committed offset is where reading resumes.
    again = tracker.take(A, 30)
    assert tracker.last_committed(A) is None
    assert tracker.to_commit({A}) == {A: 30}  # nothing known committed since the assignment
    tracker.finished(straggler)  # the old assignment's record: no effect on the new one
    assert tracker.in_flight(A) == frozenset({30})
    tracker.failed(straggler)
    assert tracker.failed_offsets(A) == frozenset()
    tracker.finished(again)
    assert tracker.to_commit({A}) == {A: 31}


def test_revoking_unknown_partitions_is_harmless() -> None:
    tracker: CommitTracker[tuple[str, int]] = CommitTracker()
    tracker.take(A, 0)
    tracker.revoke([B])
    tracker.committed({B: 4})  # a commit that raced a revoke
    assert tracker.to_commit({A, B}) == {A: 0}
    assert tracker.last_committed(B) is None
