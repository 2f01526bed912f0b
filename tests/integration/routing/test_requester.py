"""Requester against the real broker, answered by a responder written here (no fakes)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import pytest

from mulambda.errors import ConfigurationError, DecodeError, MulambdaError, RequestTimeout
from mulambda.kafka import ConsumerLoop, DeadLetterer, Producer, Record
from mulambda.kafka.reply import (
    HEADER_CORRELATION_ID,
    HEADER_REPLY_PARTITION,
    HEADER_REPLY_TOPIC,
    partition_for,
    reply_address,
    send_reply,
)
from mulambda.routing.requester import Requester, RequesterClosed
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import ReplyAddress
from mulambda.wire.events import SelectionReply, SelectionRequest, SelectionStatus, utcnow
from tests.conftest import Infra
from tests.factories import TRAITS

pytestmark = pytest.mark.integration

SelectionRequester = Requester[SelectionRequest, SelectionReply]


class Responder:
    """Answers selection requests of clients whose id starts with ``marker``.

    Echoes the request's ``policy`` and ``client_id`` (as ``selector_id``) so tests can
    tell whose reply is whose. ``policy="slow:S"`` answers after S seconds,
    ``policy="ignore"`` never answers. Other clients' requests (other tests) are skipped.
    """

    def __init__(self, infra: Infra, catalog: Catalog, marker: str) -> None:
        self.marker = marker
        self.producer = Producer(infra.kafka("responder"))
        self.acked = 0
        self.seen: dict[str, Record[Any]] = {}
        self.loop = ConsumerLoop(
            infra.kafka("responder"),
            {catalog.name(Topic.SELECTION_REQUESTS): SelectionRequest},
            self._handle,
            group_id=f"responder-{uuid.uuid4().hex[:8]}",
            dead_letters=DeadLetterer(self.producer, catalog.name(Topic.DEAD_LETTERS), None),
        )

    async def _handle(self, record: Record[Any]) -> None:
        request = record.value
        if not isinstance(request, SelectionRequest) or not request.client_id.startswith(
            self.marker
        ):
            return
        self.seen[request.correlation_id] = record
        policy = request.policy or ""
        if policy == "ignore":
            return
        if policy.startswith("slow:"):
            await asyncio.sleep(float(policy.removeprefix("slow:")))
        reply = SelectionReply(
            correlation_id=request.correlation_id,
            status=SelectionStatus.OK,
            policy=request.policy,
            selector_id=request.client_id,
        )
        delivery = await send_reply(self.producer, reply_address(request), reply)
        delivery.add_done_callback(self._count)

    def _count(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            self.acked += 1

    async def __aenter__(self) -> Self:
        await self.producer.start()
        await self.loop.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.loop.stop(grace_s=1.0)
        await self.producer.stop()


def _marker() -> str:
    return f"rq-{uuid.uuid4().hex[:8]}"


def _request(client_id: str, policy: str | None = None) -> SelectionRequest:
    # reply_topic and deadline are placeholders: Requester.request sets them.
    return SelectionRequest(
        reply_topic="placeholder",
        deadline=utcnow(),
        client_id=client_id,
        traits=TRAITS,
        policy=policy,
    )


def _requester(
    infra: Infra, catalog: Catalog, *, partition: int | None = None, **kw: Any
) -> SelectionRequester:
    return Requester(
        infra.kafka("requester"),
        request_topic=catalog.name(Topic.SELECTION_REQUESTS),
        reply_topic=catalog.name(Topic.SELECTION_REPLIES),
        reply_model=SelectionReply,
        reply_partition=partition,
        **kw,
    )


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_round_trip_carries_reply_address_in_body_and_headers(
    infra: Infra, catalog: Catalog
) -> None:
    marker = _marker()
    instance = f"router-{marker}"
    async with (
        Responder(infra, catalog, marker) as responder,
        _requester(infra, catalog, instance_id=instance) as requester,
    ):
        expected_partition = partition_for(instance, 12)
        assert requester.reply_partition == expected_partition
        message = _request(f"{marker}-c", policy="weighted")
        before = utcnow()
        reply = await requester.request(message, timeout_s=20)
        assert reply.correlation_id == message.correlation_id
        assert reply.policy == "weighted"
        assert reply.selector_id == f"{marker}-c"
        record = responder.seen[message.correlation_id]
        sent = record.value
        assert isinstance(sent, SelectionRequest)
        assert sent.reply_topic == catalog.name(Topic.SELECTION_REPLIES)
        assert sent.reply_partition == expected_partition
        assert before + timedelta(seconds=19) < sent.deadline <= utcnow() + timedelta(seconds=20)
        assert record.key == f"{marker}-c".encode()
        assert record.headers[HEADER_REPLY_TOPIC] == sent.reply_topic.encode()
        assert record.headers[HEADER_REPLY_PARTITION] == str(expected_partition).encode()
        assert record.headers[HEADER_CORRELATION_ID] == message.correlation_id.encode()
        assert requester.stats.replied == 1
        assert requester.in_flight == 0


async def _burst(
    requester: SelectionRequester, client_id: str, n: int, timeout_s: float = 30
) -> list[tuple[str, SelectionReply]]:
    async def one(i: int) -> tuple[str, SelectionReply]:
        policy = f"p-{i}"
        return policy, await requester.request(_request(client_id, policy), timeout_s=timeout_s)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_requesters_on_different_partitions_get_only_their_own_replies(
    infra: Infra, catalog: Catalog
) -> None:
    marker = _marker()
    n = 1000  # each; 2,000 in flight at once
    async with (
        Responder(infra, catalog, marker),
        Producer(infra.kafka("shared")) as shared,
        _requester(infra, catalog, partition=3, producer=shared) as a,
        _requester(infra, catalog, partition=4) as b,
    ):
        results_a, results_b = await asyncio.gather(
            _burst(a, f"{marker}-a", n), _burst(b, f"{marker}-b", n)
        )
        for results, client_id in ((results_a, f"{marker}-a"), (results_b, f"{marker}-b")):
            assert len(results) == n
            for policy, reply in results:
                assert reply.policy == policy
                assert reply.selector_id == client_id
        for requester in (a, b):
            assert requester.stats.replied == n
            assert requester.stats.foreign == 0
            assert requester.stats.late == 0
            assert requester.in_flight == 0
        assert shared.started  # a shared producer outlives the requester
    assert not shared.started


async def test_requesters_sharing_a_partition_count_foreign_replies(
    infra: Infra, catalog: Catalog
) -> None:
    marker = _marker()
    n = 100
    async with (
        Responder(infra, catalog, marker),
        _requester(infra, catalog, partition=7) as a,
        _requester(infra, catalog, partition=7) as b,
    ):
        results_a, results_b = await asyncio.gather(
            _burst(a, f"{marker}-a", n), _burst(b, f"{marker}-b", n)
        )
        assert {r.selector_id for _, r in results_a} == {f"{marker}-a"}
        assert {r.selector_id for _, r in results_b} == {f"{marker}-b"}
        assert all(policy == reply.policy for policy, reply in results_a + results_b)
        # Each reads the other's replies too, and drops them.
        await _until(lambda: a.stats.foreign == n and b.stats.foreign == n, 20, "foreign")
        assert a.stats.replied == b.stats.replied == n
        assert a.stats.late == b.stats.late == 0


async def test_replies_written_before_the_first_fetch_are_not_lost(
    infra: Infra, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _marker()
    n = 50
    async with Responder(infra, catalog, marker) as responder:
        await responder.loop.wait_assigned(timeout_s=30)  # so it answers instantly
        requester = _requester(infra, catalog, partition=9)
        await requester.start()
        try:
            consumer = requester.consumer
            assert consumer is not None
            gate = asyncio.Event()
            original = consumer.getmany

            async def gated(*args: Any, **kwargs: Any) -> Any:
                await gate.wait()
                return await original(*args, **kwargs)

            # start() returned without yielding to the reader task, so its first fetch
            # has not happened yet; hold it until every reply is in the log.
            monkeypatch.setattr(consumer, "getmany", gated)
            tasks = [
                asyncio.create_task(
                    requester.request(_request(f"{marker}-r", f"p-{i}"), timeout_s=60)
                )
                for i in range(n)
            ]
            await _until(lambda: responder.acked == n, 30, "all replies written")
            assert not any(task.done() for task in tasks)
            gate.set()
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert sorted(r.policy or "" for r in replies) == sorted(f"p-{i}" for i in range(n))
            assert requester.stats.replied == n
        finally:
            await requester.stop()


async def test_records_written_right_after_start_are_read(infra: Infra, catalog: Catalog) -> None:
    """The offset is fixed inside start(), not lazily at a later fetch.

    Records are written by another thread while this event loop is blocked right after
    start() returned, so the requester cannot fetch (or resolve "end") in between. They
    must all be read (as foreign replies: nobody asked for them).
    """
    topic = catalog.name(Topic.SELECTION_REPLIES)
    k = 20
    written: list[int] = []

    def write_from_another_thread() -> None:
        async def produce() -> None:
            async with Producer(infra.kafka("other-thread")) as producer:
                for i in range(k):
                    reply = SelectionReply(correlation_id=f"x-{i}", status=SelectionStatus.ERROR)
                    meta = await producer.send_and_wait(topic, reply, partition=6)
                    written.append(meta.offset)

        asyncio.run(produce())

    async with _requester(infra, catalog, partition=6) as requester:
        thread = threading.Thread(target=write_from_another_thread)
        thread.start()
        thread.join(timeout=60)  # blocks this loop on purpose
        assert len(written) == k
        await _until(lambda: requester.stats.foreign == k, 20, "records written after start")
        assert requester.stats.invalid == 0


async def test_timeout_raises_and_the_late_reply_is_counted(infra: Infra, catalog: Catalog) -> None:
    marker = _marker()
    async with (
        Responder(infra, catalog, marker) as responder,
        _requester(infra, catalog, partition=10) as requester,
    ):
        await responder.loop.wait_assigned(timeout_s=30)
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as info:
            await requester.request(_request(f"{marker}-t", "slow:1.5"), timeout_s=0.4)
        assert time.monotonic() - started < 5
        assert info.value.retriable
        assert requester.stats.timeouts == 1
        assert requester.in_flight == 0
        await _until(lambda: requester.stats.late == 1, 20, "the late reply")
        assert requester.stats.foreign == 0
        assert requester.stats.replied == 0
        # The requester keeps working after a timeout.
        reply = await requester.request(_request(f"{marker}-t", "fast"), timeout_s=20)
        assert reply.policy == "fast"


async def test_stop_fails_pending_requests(infra: Infra, catalog: Catalog) -> None:
    marker = _marker()  # no responder: nobody answers
    requester = _requester(infra, catalog, partition=11)
    await requester.start()
    tasks = [
        asyncio.create_task(requester.request(_request(f"{marker}-s"), timeout_s=60))
        for _ in range(5)
    ]
    await _until(lambda: requester.stats.sent == 5, 20, "requests sent")
    assert requester.in_flight == 5
    await requester.stop()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, RequesterClosed) for r in results), results
    assert "requester stopped" in str(results[0])
    await requester.stop()  # idempotent
    with pytest.raises(MulambdaError, match=r"stopped|not started"):
        await requester.request(_request(f"{marker}-s"), timeout_s=1)


async def test_undecodable_and_unmatched_replies_are_counted(
    infra: Infra, catalog: Catalog
) -> None:
    marker = _marker()
    reply_topic = catalog.name(Topic.SELECTION_REPLIES)
    async with (
        Producer(infra.kafka("intruder")) as intruder,
        _requester(infra, catalog, partition=8) as requester,
    ):
        message = _request(f"{marker}-i")
        pending = asyncio.create_task(requester.request(message, timeout_s=30))
        await _until(lambda: requester.stats.sent == 1, 20, "request sent")
        address = ReplyAddress(reply_topic, 8, message.correlation_id)
        # Garbage without a correlation header: dropped and counted.
        await intruder.send_raw(reply_topic, b"{not json", partition=8)
        # A valid reply to nobody's request, no header: decoded, then foreign.
        stranger = SelectionReply(correlation_id="nobody", status=SelectionStatus.ERROR)
        await intruder.send_and_wait(reply_topic, stranger, partition=8)
        # Garbage carrying our correlation id: the waiting request fails at once.
        delivery = await send_reply(intruder, address, b'{"status": "ok"}')
        await delivery
        with pytest.raises(DecodeError, match="undecodable reply"):
            await asyncio.wait_for(pending, 20)
        await _until(lambda: requester.stats.invalid == 2, 20, "invalid counted")
        assert requester.stats.foreign == 1
        assert requester.in_flight == 0


async def test_bad_reply_topic_or_partition_is_a_configuration_error(
    infra: Infra, catalog: Catalog
) -> None:
    with pytest.raises(ConfigurationError, match="no partition 12"):
        await _requester(infra, catalog, partition=12).start()
    missing: SelectionRequester = Requester(
        infra.kafka("requester"),
        request_topic=catalog.name(Topic.SELECTION_REQUESTS),
        reply_topic=f"missing-{uuid.uuid4().hex[:8]}",
        reply_model=SelectionReply,
    )
    with pytest.raises(ConfigurationError, match="does not exist"):
        await missing.start()
    assert not missing.started
