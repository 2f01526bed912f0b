"""Coordinator failover for aiokafka's producer, which 0.12 does not do on its own.

A transactional producer talks to two coordinators: the transaction coordinator (the
leader of its ``__transaction_state`` partition) and, for ``send_offsets_to_transaction``,
the consumer group's coordinator. When the broker holding either is killed, the cluster
moves them within a broker session timeout; aiokafka's producer does not follow:

(a) Its sender caches each coordinator's node id and forgets it only when a broker
    answers NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE. A killed broker answers
    nothing: every request to it fails to connect and is retried, after
    ``retry_backoff_ms``, on the same node, until that broker is back
    (aio-libs/aiokafka#1134 and #1145). Meanwhile no transaction commits, so every
    exactly-once answer waits for the dead broker.
(b) A coordinator lookup (FindCoordinator) goes to a random broker of the metadata, which
    lists the dead one until the controller fences it. When the lookup picks it, the
    send fails, and the sender re-raises that as a plain KafkaError that ends its
    background task: the producer is dead for good. What it means is
    COORDINATOR_NOT_AVAILABLE, which the sender retries after a metadata refresh.
(c) The client keeps connection metadata per coordinator node and drops a node's when
    another coordinator replaces it, even when the node still holds another coordinator
    (the group's and the transactions' are often on one broker). The sender's next
    request to that one fails an assertion inside its task, ending it too
    (aio-libs/aiokafka#1151); and when that coordinator is looked up again, dropping the
    node a second time raises KeyError, which ends the sender as well (seen here in the
    exactly-once broker failover). A node's metadata is now dropped once no coordinator
    is on it any more, and a coordinator without metadata is as good as unreachable.

:func:`forget_unreachable_coordinators` fixes these on one producer, through instance
attributes of its own client: no aiokafka class changes, and consumers and admin clients
are left as they are (a consumer's group coordinator already marks itself dead when a
send fails). :func:`mulambda.kafka.config.start_bounded` applies it to every producer
it starts. Errors stay aiokafka's inside the client, where its sender handles them; what
reaches MuLambda code is translated as before (:func:`mulambda.kafka.config.kafka_error`:
an unavailable coordinator is a retriable KafkaUnavailable).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, MutableMapping
from typing import Any, Final, TypeVar

from aiokafka.client import ConnectionGroup
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from aiokafka.structs import BrokerMetadata

log = logging.getLogger(__name__)

UNREACHABLE: Final = (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError)
"""aiokafka's errors for a request that reached no broker (refused, gone, timed out)."""

_MARK: Final = "_mulambda_coordinator_failover"

K = TypeVar("K", bound=Hashable)


def forget_node(coordinators: MutableMapping[K, Any], node_id: Any) -> list[K]:
    """Remove every coordinator held on ``node_id`` from ``coordinators`` (coordinator
    type → node id, as aiokafka's sender keeps them); the types forgotten."""
    gone = [kind for kind, node in coordinators.items() if node == node_id]
    for kind in gone:
        del coordinators[kind]
    return gone


def replace_coordinator(
    nodes: MutableMapping[Any, Any],
    by_purpose: MutableMapping[Any, Any],
    purpose: Any,
    node_id: Any,
    metadata: Any,
) -> None:
    """Record ``node_id`` (with its connection ``metadata``) as the coordinator for
    ``purpose`` in aiokafka's two maps (node → metadata, purpose → node); the node it
    replaces loses its metadata only when no other purpose is still on it."""
    old = by_purpose.pop(purpose, None)
    by_purpose[purpose] = node_id
    nodes[node_id] = metadata
    if old is not None and old != node_id and old not in by_purpose.values():
        nodes.pop(old, None)


def forget_unreachable_coordinators(producer: Any) -> bool:
    """Make ``producer`` (an AIOKafkaProducer, before it starts) look up a coordinator
    again when its node cannot be reached, and retry a lookup that reached no broker
    (module docstring). False when ``producer`` has no sender of the kind patched."""
    sender = getattr(producer, "_sender", None)
    client = getattr(producer, "client", None)
    coordinators = getattr(sender, "_coordinators", None)
    if client is None or not isinstance(coordinators, dict):
        return False
    if getattr(client, _MARK, False):
        return True
    send = client.send
    lookup = client.coordinator_lookup
    cluster = client.cluster

    def forget(node_id: Any, why: str) -> None:
        gone = forget_node(coordinators, node_id)
        if gone:
            names = ", ".join(getattr(kind, "name", str(kind)).lower() for kind in gone)
            log.warning("%s coordinator on node %s %s: looking it up again", names, node_id, why)

    @functools.wraps(send)
    async def send_forgetting(
        node_id: Any, request: Any, *, group: Any = ConnectionGroup.DEFAULT
    ) -> Any:
        if (
            group == ConnectionGroup.COORDINATION
            and client.cluster.coordinator_metadata(node_id) is None
        ):
            # aiokafka would assert here (c); say what it is: not a reachable coordinator.
            forget(node_id, "has no metadata any more")
            raise NodeNotReadyError(f"coordinator node {node_id} is no longer known")
        try:
            return await send(node_id, request, group=group)
        except UNREACHABLE as exc:
            forget(node_id, f"is unreachable ({type(exc).__name__})")
            raise

    @functools.wraps(lookup)
    async def lookup_retriable(coordinator_type: Any, coordinator_key: Any) -> Any:
        if client.get_random_node() is None:
            # No broker in the metadata at all (aiokafka asserts there is one).
            client.force_metadata_update()
            raise CoordinatorNotAvailableError("no broker known to ask for the coordinator")
        try:
            return await lookup(coordinator_type, coordinator_key)
        except UNREACHABLE as exc:
            raise CoordinatorNotAvailableError(
                f"the coordinator lookup reached no broker ({type(exc).__name__}: {exc})"
            ) from exc

    def add_coordinator(
        node_id: Any, host: str, port: int, rack: str | None = None, *, purpose: Any
    ) -> None:
        replace_coordinator(
            cluster._coordinators,
            cluster._coordinator_by_key,
            purpose,
            node_id,
            BrokerMetadata(node_id, host, port, rack),
        )

    client.send = send_forgetting
    client.coordinator_lookup = lookup_retriable
    # The lookup records what it found here (c).
    cluster.add_coordinator = add_coordinator
    setattr(client, _MARK, True)
    return True
