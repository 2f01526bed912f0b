"""The producer's recovery decisions, driven through a scripted stand-in of aiokafka's client.

The real broker-restart path is in tests/faults; here each failure mode is set up exactly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
    UnknownProducerId,
)

from mulambda.errors import KafkaUnavailable
from mulambda.kafka.config import KafkaConfig
from mulambda.kafka.health import LinkHealth, consumer_problem, producer_problem
from mulambda.kafka.producer import Producer, is_fatal

pytestmark = pytest.mark.unit


class ScriptedClient:
    """Stands in for AIOKafkaProducer: each send takes the next scripted outcome."""

    def __init__(self, name: str, outcomes: list[Any]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.sent: list[bytes | None] = []
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, tuple) and outcome[0] == "raise":
            raise outcome[1]
        self.sent.append(kwargs["value"])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result((self.name, kwargs["value"]))
        return future


def _producer(*clients: ScriptedClient, delivery_timeout_s: float = 5.0) -> Producer:
    queue = list(clients)
    return Producer(
        KafkaConfig(request_timeout_s=1.0),
        delivery_timeout_s=delivery_timeout_s,
        retry_backoff_s=0.001,
        client_factory=lambda: queue.pop(0),
    )


async def test_a_fatal_idempotence_error_replaces_the_client_and_sends_again() -> None:
    first = ScriptedClient("first", [OutOfOrderSequenceNumber()])
    second = ScriptedClient("second", [])
    async with _producer(first, second) as producer:
        delivery = await producer.send_raw("t", b"r1")
        assert await asyncio.wait_for(delivery, 1) == ("second", b"r1")
        assert producer.recoveries == 1
        assert second.sent == [b"r1"]
        assert producer.health.ok
        await asyncio.sleep(0.01)
        assert first.stopped, "the dead client is closed"


async def test_records_failing_together_share_one_replacement() -> None:
    first = ScriptedClient("first", [UnknownProducerId(), OutOfOrderSequenceNumber(), "ok"])
    second = ScriptedClient("second", [])
    async with _producer(first, second) as producer:
        deliveries = [await producer.send_raw("t", b"r%d" % i) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*deliveries), 1)
        assert results == [("second", b"r0"), ("second", b"r1"), ("first", b"r2")]
        assert producer.recoveries == 1


async def test_sends_refused_before_queueing_are_retried_until_they_get_through() -> None:
    client = ScriptedClient(
        "only", [("raise", LeaderNotAvailableError()), ("raise", KafkaTimeoutError()), "ok"]
    )
    async with _producer(client) as producer:
        delivery = await producer.send_raw("t", b"r")
        assert await delivery == ("only", b"r")
        assert producer.recoveries == 0
        assert producer.health.ok


async def test_a_send_that_never_gets_through_fails_after_the_delivery_timeout() -> None:
    client = ScriptedClient("only", [("raise", LeaderNotAvailableError())] * 10_000)
    async with _producer(client, delivery_timeout_s=0.05) as producer:
        with pytest.raises(KafkaUnavailable, match="send to t failed"):
            await producer.send_raw("t", b"r")
        assert not producer.health.ok
        assert "LeaderNotAvailable" in (producer.health.last_error or "")


async def test_other_delivery_errors_fail_the_delivery_without_replacing() -> None:
    client = ScriptedClient("only", [MessageSizeTooLargeError()])
    async with _producer(client) as producer:
        delivery = await producer.send_raw("t", b"r")
        with pytest.raises(MessageSizeTooLargeError):
            await delivery
        assert producer.recoveries == 0


async def test_a_record_failing_fatally_on_every_client_gives_up() -> None:
    clients = [ScriptedClient(f"c{i}", [OutOfOrderSequenceNumber()]) for i in range(10)]
    async with _producer(*clients) as producer:
        delivery = await producer.send_raw("t", b"r")
        with pytest.raises(OutOfOrderSequenceNumber):
            await asyncio.wait_for(delivery, 1)
        assert producer.recoveries == 5


def test_fatal_errors_are_the_idempotence_ones() -> None:
    assert is_fatal(OutOfOrderSequenceNumber())
    assert is_fatal(UnknownProducerId())
    assert not is_fatal(LeaderNotAvailableError())


def test_link_health_fails_from_the_first_failure_until_a_success() -> None:
    now = [100.0]
    health = LinkHealth(clock=lambda: now[0])
    assert health.ok
    assert health.failing_for() == 0.0
    health.failed("a")
    now[0] = 103.0
    health.failed("b")
    assert not health.ok
    assert health.failing_for() == 3.0
    assert health.last_error == "b"
    health.succeeded()
    assert health.ok


async def test_a_batch_no_leader_took_is_sent_again_on_the_same_client() -> None:
    client = ScriptedClient("only", [LeaderNotAvailableError(), KafkaTimeoutError(), "ok"])
    async with _producer(client) as producer:
        delivery = await producer.send_raw("t", b"r")
        assert await asyncio.wait_for(delivery, 1) == ("only", b"r")
        assert client.sent == [b"r", b"r", b"r"]
        assert producer.recoveries == 0


async def test_an_ambiguous_delivery_failure_is_not_sent_again() -> None:
    client = ScriptedClient("only", [RequestTimedOutError()])
    async with _producer(client) as producer:
        delivery = await producer.send_raw("t", b"r")
        with pytest.raises(RequestTimedOutError):
            await delivery
        assert client.sent == [b"r"]


class _Consumer:
    """Stands in for a consumer's assignment and poll times (public aiokafka API)."""

    def __init__(self, polls: dict[str, int | None]) -> None:
        self.polls = polls

    def assignment(self) -> set[str]:
        return set(self.polls)

    def last_poll_timestamp(self, tp: str) -> int | None:
        return self.polls[tp]


def test_consumer_problems_name_what_is_wrong() -> None:
    now_ms = time.time() * 1000
    fresh = _Consumer({"a": int(now_ms), "b": None})
    stale = _Consumer({"a": int(now_ms), "b": int(now_ms - 6000)})
    assert consumer_problem(None, "c") == "c not started"
    assert consumer_problem(_Consumer({}), "c", needs_assignment=True) == (
        "c has no partition assigned"
    )
    assert consumer_problem(_Consumer({}), "c") is None
    assert consumer_problem(fresh, "c", needs_assignment=True) is None
    assert consumer_problem(stale, "c") == "c had no fetch response for 5s"


def test_producer_problem_while_the_link_fails() -> None:
    health = LinkHealth(clock=lambda: 10.0)
    assert producer_problem(health) is None
    health.failed("no leader")
    assert producer_problem(health) == "producer failing for 0.0s: no leader"
