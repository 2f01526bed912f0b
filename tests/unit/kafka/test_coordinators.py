"""Coordinator failover on a real, unstarted aiokafka producer whose client's network
calls are scripted: a killed coordinator is forgotten, a lookup that reached no broker is
retried, and the sender's own lookup loop gets the new coordinator instead of dying.

The failover against real brokers is tests/faults/test_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from mulambda.errors import KafkaUnavailable
from mulambda.kafka.config import kafka_error
from mulambda.kafka.coordinators import (
    forget_node,
    forget_unreachable_coordinators,
    replace_coordinator,
)

pytestmark = pytest.mark.unit


class Script:
    """The outcomes the client's network calls take, in order (an exception is raised)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Any, ...]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((*args, *kwargs.values()))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest_asyncio.fixture(loop_scope="session")
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-1")
    yield client
    # Never started: nothing to close but the client's own (idle) state.
    await client.client.close()


def _with_coordinators(producer: AIOKafkaProducer, **held: int) -> dict[Any, int]:
    coordinators: dict[Any, int] = producer._sender._coordinators
    coordinators.clear()
    for name, node in held.items():
        coordinators[getattr(CoordinationType, name)] = node
    return coordinators


def test_forget_node_removes_every_coordinator_on_that_node() -> None:
    held = {"group": 2, "transaction": 2, "other": 3}
    assert forget_node(held, 2) == ["group", "transaction"]
    assert held == {"other": 3}
    assert forget_node(held, 7) == []


def test_a_node_keeps_its_metadata_while_another_coordinator_is_on_it() -> None:
    nodes: dict[int, str] = {}
    by_purpose: dict[str, int] = {}
    replace_coordinator(nodes, by_purpose, "txn", 3, "meta-3")
    replace_coordinator(nodes, by_purpose, "group", 3, "meta-3")
    # The transactions moved to node 2: node 3 still holds the group's coordinator.
    replace_coordinator(nodes, by_purpose, "txn", 2, "meta-2")
    assert nodes == {3: "meta-3", 2: "meta-2"}
    # Then the group's moved too (aiokafka raised KeyError here): node 3 is dropped.
    replace_coordinator(nodes, by_purpose, "group", 2, "meta-2")
    assert nodes == {2: "meta-2"}
    assert by_purpose == {"txn": 2, "group": 2}
    replace_coordinator(nodes, by_purpose, "group", 2, "meta-2b")  # same node again
    assert nodes == {2: "meta-2b"}


async def test_the_clients_lookups_record_coordinators_that_share_a_node(
    producer: AIOKafkaProducer,
) -> None:
    client = producer.client
    forget_unreachable_coordinators(producer)
    cluster = client.cluster
    txn, group = (CoordinationType.TRANSACTION, "t-1"), (CoordinationType.GROUP, "routers")
    cluster.add_coordinator(3, "127.0.0.1", 9096, purpose=txn)
    cluster.add_coordinator(3, "127.0.0.1", 9096, purpose=group)
    cluster.add_coordinator(2, "127.0.0.1", 9094, purpose=txn)
    assert cluster.coordinator_metadata(3) is not None
    cluster.add_coordinator(2, "127.0.0.1", 9094, purpose=group)
    assert cluster.coordinator_metadata(3) is None
    assert cluster.coordinator_metadata(2).port == 9094


def test_only_producers_are_patched_and_only_once() -> None:
    assert not forget_unreachable_coordinators(object())


async def test_a_coordinator_that_cannot_be_reached_is_forgotten(
    producer: AIOKafkaProducer,
) -> None:
    client = producer.client
    script = Script(NodeNotReadyError("node 2 not ready"), "response")
    client.send = script
    assert forget_unreachable_coordinators(producer)
    assert forget_unreachable_coordinators(producer)  # idempotent: wrapped once
    coordinators = _with_coordinators(producer, TRANSACTION=2, GROUP=2)
    client.cluster.add_coordinator(2, "127.0.0.1", 1, purpose=(CoordinationType.TRANSACTION, "t-1"))
    with pytest.raises(NodeNotReadyError):
        await client.send(2, "AddPartitionsToTxn", group=ConnectionGroup.COORDINATION)
    assert coordinators == {}  # both looked up again, not retried on node 2 forever
    # A request that goes through forgets nothing.
    _with_coordinators(producer, TRANSACTION=2)
    assert await client.send(2, "EndTxn", group=ConnectionGroup.COORDINATION) == "response"
    assert coordinators == {CoordinationType.TRANSACTION: 2}


async def test_a_coordinator_whose_metadata_was_dropped_is_forgotten_not_asserted(
    producer: AIOKafkaProducer,
) -> None:
    client = producer.client
    script = Script()
    client.send = script
    forget_unreachable_coordinators(producer)
    coordinators = _with_coordinators(producer, GROUP=5)
    assert client.cluster.coordinator_metadata(5) is None
    with pytest.raises(NodeNotReadyError, match="no longer known"):
        await client.send(5, "TxnOffsetCommit", group=ConnectionGroup.COORDINATION)
    assert coordinators == {}
    assert script.calls == []  # never reached aiokafka's assertion


async def test_a_failed_produce_request_forgets_coordinators_on_its_node(
    producer: AIOKafkaProducer,
) -> None:
    client = producer.client
    client.send = Script(KafkaConnectionError("refused"))
    forget_unreachable_coordinators(producer)
    coordinators = _with_coordinators(producer, TRANSACTION=1, GROUP=3)
    with pytest.raises(KafkaConnectionError):
        await client.send(1, "Produce")
    assert coordinators == {CoordinationType.GROUP: 3}


@pytest.mark.parametrize(
    "unreachable",
    [NodeNotReadyError("gone"), KafkaConnectionError("refused"), RequestTimedOutError()],
)
async def test_a_lookup_that_reaches_no_broker_is_a_retriable_unavailable_coordinator(
    producer: AIOKafkaProducer, unreachable: Exception
) -> None:
    client = producer.client
    client.coordinator_lookup = Script(unreachable)
    client.get_random_node = lambda: 1
    forget_unreachable_coordinators(producer)
    with pytest.raises(CoordinatorNotAvailableError) as raised:
        await client.coordinator_lookup(CoordinationType.TRANSACTION, "t-1")
    assert raised.value.retriable
    assert isinstance(raised.value.__cause__, type(unreachable))
    # Should it ever reach MuLambda code, it is a retriable KafkaUnavailable.
    translated = kafka_error(raised.value, "commit")
    assert isinstance(translated, KafkaUnavailable)
    assert translated.retriable


async def test_a_lookup_without_any_known_broker_is_retriable(
    producer: AIOKafkaProducer,
) -> None:
    client = producer.client
    client.coordinator_lookup = Script()
    client.get_random_node = lambda: None
    refreshed: list[bool] = []
    client.force_metadata_update = lambda: refreshed.append(True)
    forget_unreachable_coordinators(producer)
    with pytest.raises(CoordinatorNotAvailableError, match="no broker known"):
        await client.coordinator_lookup(CoordinationType.GROUP, "routers")
    assert refreshed == [True]


async def test_the_senders_lookup_loop_finds_the_new_coordinator_instead_of_dying(
    producer: AIOKafkaProducer,
) -> None:
    """aiokafka's own Sender._find_coordinator, with the patch: the first lookup goes to
    the killed broker, the second finds the coordinator the cluster moved to node 3."""
    client = producer.client
    client.coordinator_lookup = Script(NodeNotReadyError("node 1 is gone"), 3)
    client.get_random_node = lambda: 1
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    client.force_metadata_update = lambda: done
    client.ready = Script(True)
    forget_unreachable_coordinators(producer)
    _with_coordinators(producer)
    sender = producer._sender
    sender._retry_backoff = 0.01
    found = await asyncio.wait_for(sender._find_coordinator(CoordinationType.TRANSACTION, "t-1"), 5)
    assert found == 3
    assert sender._coordinators == {CoordinationType.TRANSACTION: 3}
