"""The hostile record builders agree with the pure cores on what is bad (no servers).

A self-check of ``hostile.py``, so the suite against the workers tests the workers, not
its own bookkeeping: every record marked served decodes and passes the registration
gate; every record marked rejected is refused by the codec, the state applier or the
gate; :func:`answerable` reads what the codec's reply-address peek reads.
"""

from __future__ import annotations

import pytest

from mulambda.errors import DecodeError, UntrustedRecord
from mulambda.selection.admission import EndpointAllowList, RegistrationGate
from mulambda.selection.state import StateApplier
from mulambda.wire.catalog import Topic, load_catalog
from mulambda.wire.codec import decode, peek_reply_address
from mulambda.wire.events import ExecutorRegistration
from tests.fuzz.hostile import (
    CONSUMED,
    STATE_TOPICS,
    Context,
    Kind,
    build,
    json_types,
    kinds_for,
)

CTX = Context(
    catalog=load_catalog("fz."),
    secret=b"fuzz secret",
    selection_reply_partition=3,
    router_reply_partition=4,
    limits=dict.fromkeys(CONSUMED, 64 * 1024),
)


def refused_by_the_cores(
    topic: Topic, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> bool:
    name = CTX.catalog.name(topic)
    try:
        if topic in STATE_TOPICS:
            message = StateApplier(CTX.catalog).decode(name, value)
        elif value is None:
            return True  # a request or reply without a body
        else:
            message = decode(CONSUMED[topic], value, max_bytes=CTX.limits[topic])
        if topic is Topic.EXECUTOR_REGISTRATIONS:
            gate = RegistrationGate(CTX.secret, EndpointAllowList(["127.0.0.1/32"]))
            registration = message if isinstance(message, ExecutorRegistration) else None
            gate.admit(key, value, headers, registration)
    except (DecodeError, UntrustedRecord):
        return True
    return False


@pytest.mark.parametrize("topic", list(CONSUMED), ids=lambda t: t.value)
def test_every_kind_is_judged_as_marked(topic: Topic) -> None:
    for kind in kinds_for(topic):
        for seed in range(25):
            record = build(topic, kind, seed, CTX, serial=seed)
            refused = refused_by_the_cores(topic, record.key, record.value, record.headers)
            assert refused is not record.served, (kind, seed, record.value)


@pytest.mark.parametrize("topic", [Topic.SELECTION_REQUESTS, Topic.INFERENCE_REQUESTS])
def test_answerable_reads_what_the_codec_peeks(topic: Topic) -> None:
    for kind in kinds_for(topic):
        for seed in range(25):
            record = build(topic, kind, seed, CTX, serial=seed)
            peeked = peek_reply_address(record.value)
            ours = peeked is not None and peeked.topic == CTX.catalog.name(
                Topic.SELECTION_REPLIES
                if topic is Topic.SELECTION_REQUESTS
                else Topic.INFERENCE_RESULTS
            )
            assert record.answerable(CTX) is ours, (kind, seed, record.value)


def test_kinds_per_topic() -> None:
    assert Kind.FORGED in kinds_for(Topic.EXECUTOR_REGISTRATIONS)
    assert Kind.TOMBSTONE not in kinds_for(Topic.CLIENT_REGISTRATIONS)  # tombstones belong
    assert Kind.WRONG_KEY not in kinds_for(Topic.INFERENCE_REQUESTS)  # a key only partitions
    assert (
        len(
            {
                build(Topic.INFERENCE_REQUESTS, Kind.VALID, 0, CTX, s).correlation_id
                for s in range(50)
            }
        )
        == 50
    )


def test_json_types_of_schema_nodes() -> None:
    root = {"$defs": {"E": {"enum": ["a", "b"], "type": "string"}}}
    assert json_types({"type": "number"}, root) == {"number", "integer"}
    assert json_types({"anyOf": [{"$ref": "#/$defs/E"}, {"type": "null"}]}, root) == {
        "string",
        "null",
    }
    assert json_types({"anyOf": [{"type": "string"}, {}]}, root) == set()
    assert json_types({}, root) == set()
