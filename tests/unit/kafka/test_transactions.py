from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from mulambda.errors import StaleGeneration
from mulambda.kafka.config import KafkaConfig
from mulambda.kafka.fencing import Generation
from mulambda.kafka.records import TopicPartition
from mulambda.kafka.transactions import (
    AnswerBuffer,
    TransactionalProducer,
    committed_anyway,
    current_position,
)

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


# --- a failed transaction: recovery and its unknown outcome ---------------------------


def test_a_fenced_partition_drops_its_answers_and_discards_later_ones_until_revoked() -> None:
    buffer: AnswerBuffer[str, str] = AnswerBuffer()
    buffer.add("p0", 1, "r1")
    buffer.add("p1", 1, "q1")
    assert buffer.fence(["p0"]) == 1
    assert buffer.fenced(["p0", "p1"]) == {"p0"}
    assert not buffer.add("p0", 2, "r2"), "a straggler's answer for a partition not ours"
    assert buffer.releasable({"p0": 10, "p1": 10}) == ["q1"]
    buffer.drop(["p0"])  # revoked: if it comes back it is a new assignment
    assert buffer.fenced(["p0"]) == set()
    assert buffer.add("p0", 3, "r3")
    assert buffer.releasable({"p0": 10}) == ["r3"]


def test_a_failed_transaction_committed_after_all_where_the_offsets_reached_its_points() -> None:
    points = {"p0": 10, "p1": 4}
    assert committed_anyway(points, {"p0": 10, "p1": 4}) == points
    assert committed_anyway(points, {"p0": 12, "p1": 4}) == points  # a later owner went on
    assert committed_anyway(points, {"p0": 9, "p1": 3}) == {}
    assert committed_anyway(points, {"p0": None}) == {}


class _Client:
    """Stands in for aiokafka's transactional producer (no broker: recovery logic only)."""

    def __init__(self, *, broken: bool = False, commits: bool = True) -> None:
        self.broken = broken
        self.commits = commits
        self.sent: list[bytes | None] = []
        self.stopped = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        if self.broken:  # what aiokafka does once its sender died
            raise AssertionError("Invalid state transition FATAL_ERROR -> IN_TRANSACTION")

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append(kwargs["value"])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        return None

    async def commit_transaction(self) -> None:
        if not self.commits:
            raise KafkaError("the broker went away while committing")

    async def abort_transaction(self) -> None:
        raise AssertionError("Invalid state transition FATAL_ERROR -> ABORTING_TRANSACTION")


class _Producer(TransactionalProducer):
    def __init__(self, clients: list[_Client]) -> None:
        super().__init__(
            KafkaConfig(bootstrap_servers="127.0.0.1:1"), transactional_id="t", group_id="g"
        )
        self.clients = clients
        self.made: list[_Client] = []

    def _new_client(self) -> Any:
        self.made.append(self.clients.pop(0))
        return self.made[-1]


TP = TopicPartition("requests", 0)


async def _hold(producer: TransactionalProducer, offset: int, value: bytes) -> None:
    token = current_position.set((TP, offset))
    try:
        await producer.send_raw("results", value)
    finally:
        current_position.reset(token)


async def test_a_client_left_in_its_fatal_state_is_replaced_and_the_answers_kept() -> None:
    producer = _Producer([_Client(broken=True), _Client()])
    await producer.start()
    await _hold(producer, 0, b"r0")
    assert not await producer.commit({TP: 1})
    assert producer.made[0].stopped, "the broken client is closed"
    assert producer.held == 1, "the answer waits for the next transaction"
    assert await producer.commit({TP: 1})
    assert producer.made[1].sent == [b"r0"]
    assert producer.held == 0


@pytest.mark.parametrize(("committed", "resent"), [(1, []), (0, [b"r0"]), (None, [b"r0"])])
async def test_a_transaction_of_unknown_outcome_is_resolved_by_the_committed_offsets(
    committed: int | None, resent: list[bytes]
) -> None:
    producer = _Producer([_Client(commits=False), _Client()])
    asked: list[list[TopicPartition]] = []

    async def committed_offsets(tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        asked.append(tps)
        return {TP: committed}

    producer.resolve_with(committed_offsets)
    await producer.start()
    await _hold(producer, 0, b"r0")
    assert not await producer.commit({TP: 1})
    assert await producer.commit({TP: 1})
    assert asked == [[TP]]
    assert producer.made[1].sent == resent, "an answer committed after all is not sent again"
    assert producer.committed_after_all == (1 if committed == 1 else 0)


# --- a zombie: the group refuses the generation ------------------------------------------


class _Fencing:
    """Stands in for FencedOffsets: the group refuses (or takes) the offsets."""

    def __init__(self, *, refuse: bool) -> None:
        self.refuse = refuse
        self.sent: list[tuple[dict[TopicPartition, int], Generation]] = []

    async def send(self, client: Any, offsets: Any, generation: Generation) -> None:
        self.sent.append((dict(offsets), generation))
        if self.refuse:
            raise StaleGeneration("ILLEGAL_GENERATION")


class _Aborts(_Client):
    def __init__(self) -> None:
        super().__init__()
        self.begun = 0
        self.aborted = 0

    async def begin_transaction(self) -> None:
        self.begun += 1

    async def abort_transaction(self) -> None:
        self.aborted += 1


GEN = Generation(4, "member-1", "router-0")


async def test_a_refused_generation_aborts_and_drops_the_answers_for_good() -> None:
    client = _Aborts()
    producer = _Producer([client])
    fencing = _Fencing(refuse=True)
    producer._fencing = fencing  # type: ignore[assignment]
    await producer.start()
    await _hold(producer, 0, b"r0")
    assert not await producer.commit({TP: 1}, GEN)
    assert fencing.sent == [({TP: 1}, GEN)]
    assert client.aborted == 1, "the zombie's transaction is aborted"
    assert producer.held == 0, "its answers are the new owner's to give"
    assert producer.fenced == 1
    assert producer.health.ok, "a zombie's refusal is no link failure"
    await _hold(producer, 1, b"r1")
    assert producer.held == 0, "answers of a fenced partition are discarded"
    assert not await producer.commit({TP: 2}, GEN)
    assert client.begun == 1, "no second transaction for a fenced partition"
    producer.drop([TP])  # revoked at the rejoin
    fencing.refuse = False
    await _hold(producer, 5, b"r5")
    assert await producer.commit({TP: 6}, Generation(5, "member-2", "router-0"))
    assert client.sent == [b"r0", b"r5"], "r0 went only into the aborted transaction"


async def test_no_membership_commits_nothing() -> None:
    client = _Aborts()
    producer = _Producer([client])
    producer._fencing = _Fencing(refuse=False)  # type: ignore[assignment]
    await producer.start()
    await _hold(producer, 0, b"r0")
    assert not await producer.commit({TP: 1}, Generation(-1, ""))
    assert client.begun == 0
    assert producer.held == 0


async def test_a_commit_with_a_live_generation_sends_the_offsets_through_fencing() -> None:
    client = _Aborts()
    producer = _Producer([client])
    fencing = _Fencing(refuse=False)
    producer._fencing = fencing  # type: ignore[assignment]
    await producer.start()
    await _hold(producer, 0, b"r0")
    assert await producer.commit({TP: 1}, GEN)
    assert fencing.sent == [({TP: 1}, GEN)]
    assert producer.held == 0
    assert producer.transactions == 1
