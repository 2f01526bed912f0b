"""The requester's correlation table: register, resolve, time out, release, count.

No Kafka: replies are handed to the table directly. Futures need a running loop, so
the tests are coroutines, but none of them sleeps or awaits a reply that is not there.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from mulambda.errors import ConfigurationError, DecodeError, MulambdaError
from mulambda.routing.correlation import LATE_MEMORY, CorrelationTable, RequesterStats
from mulambda.routing.requester import RequesterClosed
from mulambda.routing.requester import RequesterStats as ExportedStats

pytestmark = pytest.mark.unit


def _table(late_memory: int = LATE_MEMORY) -> CorrelationTable[str]:
    return CorrelationTable(late_memory=late_memory)


def _counts(table: CorrelationTable[str]) -> dict[str, int]:
    stats = table.stats
    return {
        "replied": stats.replied,
        "timeouts": stats.timeouts,
        "foreign": stats.foreign,
        "late": stats.late,
        "invalid": stats.invalid,
    }


def _zero(**nonzero: int) -> dict[str, int]:
    return {"replied": 0, "timeouts": 0, "foreign": 0, "late": 0, "invalid": 0, **nonzero}


async def test_a_reply_resolves_its_request() -> None:
    table = _table()
    future = table.register("c1")
    assert "c1" in table
    assert len(table) == 1
    assert not future.done()
    assert table.resolve("c1", "reply-1") is True
    assert await future == "reply-1"
    assert "c1" not in table
    assert len(table) == 0
    assert _counts(table) == _zero(replied=1)


async def test_each_reply_reaches_only_its_own_request() -> None:
    table = _table()
    futures = {f"c{i}": table.register(f"c{i}") for i in range(5)}
    for i in (3, 0, 4, 1, 2):
        table.resolve(f"c{i}", f"reply-{i}")
    assert {cid: f.result() for cid, f in futures.items()} == {
        f"c{i}": f"reply-{i}" for i in range(5)
    }
    assert _counts(table) == _zero(replied=5)


async def test_a_duplicate_in_flight_id_is_refused_and_the_first_keeps_waiting() -> None:
    table = _table()
    first = table.register("c1")
    with pytest.raises(MulambdaError, match="correlation id c1 is already in flight"):
        table.register("c1")
    assert len(table) == 1
    table.resolve("c1", "reply")
    assert first.result() == "reply"
    # Once answered, the id may be used again.
    second = table.register("c1")
    assert second is not first
    assert not second.done()


async def test_a_reply_nobody_asked_for_is_foreign() -> None:
    table = _table()
    table.register("mine")
    assert table.resolve("theirs", "reply") is False
    table.count_unmatched("also-theirs")
    assert _counts(table) == _zero(foreign=2)
    assert "mine" in table


async def test_a_reply_after_the_timeout_is_late_once() -> None:
    table = _table()
    future = table.register("c1")
    table.timed_out("c1")
    table.release("c1", future)
    assert future.cancelled()
    assert "c1" not in table
    assert _counts(table) == _zero(timeouts=1)
    assert table.resolve("c1", "too late") is False
    assert _counts(table) == _zero(timeouts=1, late=1)
    # A second copy of the same reply is no longer ours to recognise.
    table.count_unmatched("c1")
    assert _counts(table) == _zero(timeouts=1, late=1, foreign=1)


async def test_late_memory_forgets_the_oldest_timed_out_ids() -> None:
    table = _table(late_memory=3)
    for i in range(5):
        table.timed_out(f"c{i}")
    for i in range(5):
        table.count_unmatched(f"c{i}")
    # c0 and c1 were pushed out by c2..c4: their replies look foreign now.
    assert _counts(table) == _zero(timeouts=5, late=3, foreign=2)


async def test_a_late_reply_frees_its_slot_in_the_late_memory() -> None:
    table = _table(late_memory=2)
    table.timed_out("a")
    table.timed_out("b")
    table.count_unmatched("a")  # late: a is forgotten, b stays
    table.timed_out("c")  # fits without pushing b out
    table.count_unmatched("b")
    table.count_unmatched("c")
    assert _counts(table) == _zero(timeouts=3, late=3)


async def test_zero_late_memory_counts_every_unmatched_reply_as_foreign() -> None:
    table = _table(late_memory=0)
    table.timed_out("c1")
    table.count_unmatched("c1")
    assert _counts(table) == _zero(timeouts=1, foreign=1)


def test_negative_late_memory_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="late memory"):
        CorrelationTable[str](late_memory=-1)


def test_the_default_late_memory_is_bounded() -> None:
    assert 0 < LATE_MEMORY <= 1_000_000


async def test_release_cancels_a_request_the_caller_gave_up_on() -> None:
    table = _table()
    future = table.register("c1")
    table.release("c1", future)  # e.g. the caller was cancelled
    assert future.cancelled()
    assert "c1" not in table
    assert _counts(table) == _zero()  # not a timeout
    assert table.resolve("c1", "reply") is False
    assert _counts(table) == _zero(foreign=1)


async def test_release_after_the_reply_leaves_the_result() -> None:
    table = _table()
    future = table.register("c1")
    table.resolve("c1", "reply")
    table.release("c1", future)
    assert future.result() == "reply"


async def test_release_of_a_stale_future_keeps_the_new_request_with_that_id() -> None:
    table = _table()
    old = table.register("c1")
    table.fail_all(lambda cid: RequesterClosed(f"stopped ({cid})"))
    new = table.register("c1")
    table.release("c1", old)  # the first caller's cleanup runs after the re-register
    assert "c1" in table
    assert not new.done()
    table.resolve("c1", "reply")
    assert new.result() == "reply"


async def test_release_marks_an_exception_set_meanwhile_as_retrieved() -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        table = _table()
        future = table.register("c1")
        table.fail_all(lambda cid: RequesterClosed(f"stopped ({cid})"))
        table.release("c1", future)
        del future
        gc.collect()  # an unretrieved exception is reported when the future dies
    finally:
        loop.set_exception_handler(previous)
    assert unretrieved == []


async def test_fail_all_fails_every_request_and_empties_the_table() -> None:
    table = _table()
    futures = [table.register(f"c{i}") for i in range(3)]
    table.fail_all(lambda cid: RequesterClosed(f"requester stopped (request {cid})"))
    assert len(table) == 0
    for i, future in enumerate(futures):
        error = future.exception()
        assert isinstance(error, RequesterClosed)
        assert str(error) == f"requester stopped (request c{i})"
    assert table.resolve("c0", "reply") is False  # nobody waits any more
    assert _counts(table) == _zero(foreign=1)


async def test_fail_all_skips_requests_already_done() -> None:
    table = _table()
    answered = table.register("done")
    answered.set_result("early")  # completed but not yet popped
    waiting = table.register("waiting")
    table.fail_all(lambda cid: RequesterClosed(cid))
    assert answered.result() == "early"
    assert isinstance(waiting.exception(), RequesterClosed)


async def test_an_undecodable_reply_fails_the_request_it_names() -> None:
    table = _table()
    future = table.register("c1")
    other = table.register("c2")
    table.reject("c1", DecodeError("undecodable reply: not JSON"))
    with pytest.raises(DecodeError, match="undecodable reply: not JSON"):
        future.result()
    assert "c1" not in table
    assert not other.done()
    assert _counts(table) == _zero(invalid=1)


@pytest.mark.parametrize("correlation_id", [None, "", "nobody"])
async def test_an_undecodable_reply_without_a_waiting_request_is_only_counted(
    correlation_id: str | None,
) -> None:
    table = _table()
    future = table.register("c1")
    table.reject(correlation_id, DecodeError("undecodable reply"))
    assert not future.done()
    assert len(table) == 1
    assert _counts(table) == _zero(invalid=1)


async def test_a_resolved_future_that_is_already_done_is_not_counted_as_replied() -> None:
    table = _table()
    future = table.register("c1")
    future.cancel()  # the caller's side finished first
    assert table.resolve("c1", "reply") is True  # it was ours, so not foreign
    assert _counts(table) == _zero()


def test_stats_are_shared_with_the_requester() -> None:
    stats = RequesterStats(sent=4)
    table: CorrelationTable[str] = CorrelationTable(stats=stats)
    assert table.stats is stats
    table.count_unmatched("x")
    assert stats.foreign == 1
    assert stats.sent == 4
    assert ExportedStats is RequesterStats  # still importable from the requester
