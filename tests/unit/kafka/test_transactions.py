from __future__ import annotations

import pytest

from mulambda.kafka.transactions import AnswerBuffer

pytestmark = pytest.mark.unit


def test_only_answers_below_each_commit_point_are_released_in_offset_order() -> None:
    buffer: AnswerBuffer[str, str] = AnswerBuffer()
    buffer.add("p0", 7, "r7")
    buffer.add("p0", 5, "r5")
    buffer.add("p0", 5, "r5-dead-letter")
    buffer.add("p0", 9, "r9")  # above the point: its turn comes in a later transaction
    buffer.add("p1", 2, "q2")
    assert buffer.releasable({"p0": 8, "p1": 3}) == ["r5", "r5-dead-letter", "r7", "q2"]
    assert len(buffer) == 5, "nothing is forgotten until the transaction committed"


def test_released_answers_are_forgotten_and_later_ones_kept() -> None:
    buffer: AnswerBuffer[str, str] = AnswerBuffer()
    for offset in (1, 2, 3):
        buffer.add("p0", offset, f"r{offset}")
    buffer.released({"p0": 3})
    assert buffer.releasable({"p0": 10}) == ["r3"]
    buffer.released({"p0": 10})
    assert len(buffer) == 0


def test_a_failed_transaction_releases_the_same_answers_again() -> None:
    buffer: AnswerBuffer[str, str] = AnswerBuffer()
    buffer.add("p0", 1, "r1")
    first = buffer.releasable({"p0": 2})
    # the transaction aborted: released() is not called
    assert buffer.releasable({"p0": 2}) == first == ["r1"]


def test_revoked_partitions_drop_what_they_hold() -> None:
    buffer: AnswerBuffer[str, str] = AnswerBuffer()
    buffer.add("p0", 1, "r1")
    buffer.add("p0", 4, "r4")
    buffer.add("p1", 1, "q1")
    assert buffer.drop(["p0"]) == 2
    assert buffer.releasable({"p0": 10, "p1": 10}) == ["q1"]
