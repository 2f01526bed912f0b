"""Signed registrations and the endpoint allow-list, over the real Kafka and Redis.

A selector with a registration secret and an allow-list applies what a companion signs
with its own key (``register_executor`` / ``deregister_executor``, as the companion calls
them) and dead-letters, with the reason, what another executor's key signed, an unsigned
tombstone, a replayed record and an endpoint outside the list; none of those changes
what it selects. A selector started afterwards rebuilds the same view from the topic.
"""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from mulambda.executors.registration import deregister_executor, register_executor
from mulambda.kafka import Producer, start_bounded
from mulambda.selection.admission import EndpointAllowList, RegistrationGate
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import encode
from mulambda.wire.events import SelectionStatus
from mulambda.wire.signatures import SIGNATURE_HEADER, executor_key
from tests.conftest import Infra
from tests.factories import registration
from tests.integration.selection.test_selector import (
    Collector,
    State,
    _ask,
    _group,
    _requester,
    _selector,
    _traits,
    _uid,
    _until,
    prefix,
    producer,
)

pytestmark = pytest.mark.integration

__all__ = ["prefix", "producer"]  # fixtures, imported for pytest

SECRET = b"integration registration secret"


def _gate() -> RegistrationGate:
    return RegistrationGate(SECRET, EndpointAllowList.parse("127.0.0.0/8,*.test.internal"))


async def _first_signed_record(
    infra: Infra, catalog: Catalog, executor_id: str
) -> tuple[bytes, bytes]:
    """The value and signature header of the first registration keyed ``executor_id``."""
    consumer = AIOKafkaConsumer(**infra.kafka("test-auth-reader").client_kwargs(), group_id=None)
    await start_bounded(consumer, "reader", 15)
    try:
        tp = TopicPartition(catalog.name(Topic.EXECUTOR_REGISTRATIONS), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        found: tuple[bytes, bytes] | None = None
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for raw in records:
                    if found is None and raw.key == executor_id.encode() and raw.value:
                        found = (raw.value, dict(raw.headers)[SIGNATURE_HEADER])
        assert found is not None
        return found
    finally:
        await consumer.stop()


async def test_only_what_the_executor_signed_is_applied_the_rest_dead_lettered(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    good, outside, client = f"good-{uid}", f"outside-{uid}", f"client-{uid}"
    good_key = executor_key(SECRET, good)
    real = registration(good, traits=traits, endpoint="http://127.0.0.1:8501")
    selector = _selector(infra, catalog, prefix, group=_group(), registrations=_gate())
    async with (
        selector,
        _requester(infra, catalog) as requester,
        Collector(infra, catalog, 0) as collector,
    ):
        await register_executor(producer, catalog, real, signing_key=good_key)
        await state.status(good)
        await _until(lambda: selector.view.get(good) is not None, 10, "the signed registration")

        async def endpoint_selected() -> str | None:
            reply = await requester.request(_ask(client, traits))
            if reply.status is not SelectionStatus.OK:
                return None
            return reply.candidates[0].endpoint

        assert await endpoint_selected() == "http://127.0.0.1:8501"

        # Another executor's companion (its own key) re-points good at its address.
        hijack = registration(good, traits=traits, endpoint="http://127.0.0.1:6666")
        evil_key = executor_key(SECRET, f"evil-{uid}")
        await register_executor(producer, catalog, hijack, signing_key=evil_key)
        await collector.wait(letters=[good])
        assert "signature does not verify" in collector.letters[good.encode()].reason
        collector.letters.clear()

        # An unsigned tombstone (anyone with write access) cannot deregister it.
        await state.deregister(good)
        await collector.wait(letters=[good])
        assert "unsigned deregistration (tombstone)" in collector.letters[good.encode()].reason
        collector.letters.clear()

        # The genuine record, captured off the topic and written again: a replay.
        value, header = await _first_signed_record(infra, catalog, good)
        await producer.send_raw(
            catalog.name(Topic.EXECUTOR_REGISTRATIONS),
            value,
            key=good,
            headers=[(SIGNATURE_HEADER, header)],
        )
        await collector.wait(letters=[good])
        assert "a replay" in collector.letters[good.encode()].reason

        # Correctly signed, but pointing outside the allow-list.
        far = registration(outside, traits=traits, endpoint="http://10.9.9.9:8501")
        await register_executor(producer, catalog, far, signing_key=executor_key(SECRET, outside))
        await collector.wait(letters=[outside])
        letter = collector.letters[outside.encode()]
        assert "outside the allowed executor hosts and networks" in letter.reason
        assert letter.error_type == "UntrustedRecord"
        assert letter.original_value == encode(far)

        assert await endpoint_selected() == "http://127.0.0.1:8501"
        assert selector.view.get(outside) is None

        # A restarted selector rebuilds the same view from the compacted topic.
        again = _selector(infra, catalog, f"{prefix}again:", group=_group(), registrations=_gate())
        async with again:
            entry = again.view.get(good)
            assert entry is not None
            assert entry.registration.endpoint == "http://127.0.0.1:8501"
            assert again.view.get(outside) is None

        # The executor's own signed tombstone does deregister it.
        await deregister_executor(producer, catalog, good, signing_key=good_key)
        await _until(lambda: selector.view.get(good) is None, 10, "the signed tombstone")
        assert await endpoint_selected() is None
