"""Workers on a secured broker whose ACLs refuse them something: they neither crash nor
spin. A router that may not write a request's reply topic dead-letters the request with
the reason; a router refused its consumer group stays up, says why on /readyz and asks
the broker again every few seconds, not in a loop."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from mulambda.errors import ConfigurationError
from mulambda.harness.infra import PrivateInfra
from mulambda.kafka import Admin, Producer, Record, partitions_of, replay
from mulambda.kafka.acls import apply_acls
from mulambda.kafka.fetching import ACCESS_DENIED_BACKOFF_S
from mulambda.routing.router import Router
from mulambda.security import AclRule
from mulambda.security.acls import DEFAULT_ROUTER_GROUP
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.events import DeadLetter, deadline_in
from tests.factories import TRAITS
from tests.integration.routing.support import inference_request
from tests.integration.security.conftest import BROKER_USER

pytestmark = pytest.mark.integration

FOREIGN = "foreign."
"""Prefix of topics the router may see (Describe) but not write."""


def router(secured: PrivateInfra, catalog: Catalog, group: str, **extra: object) -> Router:
    return Router(
        secured.kafka_as("router"),
        catalog,
        router_id=f"r-{uuid.uuid4().hex[:6]}",
        group_id=group,
        selection_timeout_s=0.5,
        grace_s=2.0,
        **extra,  # type: ignore[arg-type]
    )


async def ended(worker: Router) -> bool:
    """Whether the router's consumer ended (it only does on failure)."""
    waiter = asyncio.create_task(worker.wait())
    await asyncio.sleep(0.1)
    if waiter.done():
        return True
    waiter.cancel()
    return False


async def dead_letters_about(
    secured: PrivateInfra, catalog: Catalog, marker: str
) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    def keep(record: Record[DeadLetter]) -> None:
        letter = record.value
        if letter is not None and marker.encode() in (letter.original_value or b""):
            found.append(letter)

    await replay(
        secured.kafka_as("administrator"), {catalog.name(Topic.DEAD_LETTERS): DeadLetter}, keep
    )
    return found


async def test_a_result_the_router_may_not_write_is_dead_lettered_without_spinning(
    secured: PrivateInfra, secured_catalog: Catalog
) -> None:
    foreign = load_catalog(FOREIGN)
    async with Admin(secured.kafka_as(BROKER_USER)) as admin:
        await admin.apply(foreign)
    # The router may look the topic up (so its reply address passes the vetting) but
    # not write it: an ACL forgotten for a reply topic the router is configured to use.
    await apply_acls(
        secured.kafka_as(BROKER_USER),
        {"User:router": [AclRule("topic", FOREIGN, "prefixed", ("Describe",))]},
    )
    reply_topic = foreign.name(Topic.INFERENCE_RESULTS)
    # ACLs reach the authorizer through the metadata log, a moment later: the router
    # must see the topic from its start, or its reply vetting calls it missing.
    give_up = time.monotonic() + 15
    while True:
        try:
            await partitions_of(secured.kafka_as("router"), reply_topic)
            break
        except ConfigurationError:
            assert time.monotonic() < give_up, "the router never saw the foreign topic"
            await asyncio.sleep(0.2)
    worker = router(
        secured,
        secured_catalog,
        f"{DEFAULT_ROUTER_GROUP}-denied-{uuid.uuid4().hex[:6]}",
        reply_topics=[reply_topic],
    )
    marker = f"denied-{uuid.uuid4().hex[:8]}"
    async with worker:
        request = inference_request(
            secured_catalog,
            TRAITS,
            reply_topic=reply_topic,
            client_id=marker,
            deadline=deadline_in(3),
        )
        async with Producer(secured.kafka_as("producer")) as app:
            await app.send_and_wait(
                secured_catalog.name(Topic.INFERENCE_REQUESTS), request, key=marker
            )
        letters: list[DeadLetter] = []
        give_up = time.monotonic() + 30
        while not letters and time.monotonic() < give_up:
            await asyncio.sleep(0.5)
            letters = await dead_letters_about(secured, secured_catalog, marker)
        assert len(letters) == 1, letters
        assert "not authorised by the cluster's ACLs" in letters[0].reason
        assert reply_topic in letters[0].reason
        # Idle now: the refusal is not retried in a loop.
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(3.0)
        used = (time.process_time() - cpu) / (time.monotonic() - wall)
        print(f"\nrouter after a refused result: {used:.1%} of a core over 3 s")
        assert used < 0.25
        assert not await ended(worker)  # still serving
        assert worker.not_ready_reason() is None  # its dead letter went through


async def test_a_router_refused_its_group_stays_up_and_says_why(
    secured: PrivateInfra, secured_catalog: Catalog
) -> None:
    worker = router(secured, secured_catalog, f"not-a-router-group-{uuid.uuid4().hex[:6]}")
    async with worker:
        reason = None
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:
            reason = worker.not_ready_reason()
            if reason and "not authorised" in reason:
                break
            await asyncio.sleep(0.2)
        assert reason is not None
        assert "GroupAuthorizationFailedError" in reason, reason
        assert not worker.ready
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(2 * ACCESS_DENIED_BACKOFF_S)
        window = time.monotonic() - wall
        used = (time.process_time() - cpu) / window
        print(f"\nrouter refused its group: {used:.1%} of a core over {window:.0f} s")
        assert used < 0.25
        assert not await ended(worker)  # alive, not crashed
