"""Hostile records for the topics MuLambda's workers consume, and what must become of each.

Pure (no servers): :func:`build` turns a topic, a :class:`Kind` and a seed into the bytes,
key and headers to publish, and says whether the record must be **served** (applied,
answered normally) or **rejected** (dead-lettered with a reason, or answered with an error
result when it has a readable reply address: :func:`answerable`, judged independently of
the codec). :class:`Tally` counts what happened, per topic, for the closing table.

Valid documents are realistic messages (a request for the served executor's traits,
replying to the suite's topics); the hostile kinds break them in one way each, using the
published JSON Schema to find fields and their JSON types (:func:`typed_fields`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

import orjson

from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, encode
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    InferenceRequest,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    ObservedLatencies,
    ObservedSample,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    SoftWeights,
    Traits,
    WireModel,
    utcnow,
)
from mulambda.wire.signatures import executor_key, sign
from tests.strategies import schema_of

SERVED_TRAITS = Traits(model_type="fuzz", input_format="synthetic", output_format="confidence")
"""Traits of the executor the suite serves; valid requests ask for these."""
OTHER_TRAITS = Traits(model_type="fuzz-other", input_format="x", output_format="y")
"""Traits of the executors generated registrations announce (never asked for)."""
SENTINEL = "fz-sentinel"
"""Executor and client the suite uses to see that a batch was applied."""


class Kind(StrEnum):
    """How a record is made."""

    VALID = "valid"
    UNKNOWN_FIELDS = "unknown-fields"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    OVERSIZE = "oversize"
    WRONG_TYPE = "wrong-type"
    MISSING_FIELD = "missing-field"
    NON_FINITE = "non-finite"
    SCHEMA_VERSION = "schema-version"
    WRONG_KEY = "wrong-key"
    FORGED = "forged"
    TOMBSTONE = "tombstone"


SERVED_KINDS = frozenset({Kind.VALID, Kind.UNKNOWN_FIELDS})
"""Kinds a worker must serve; every other kind it must reject."""

CONSUMED: dict[Topic, type[WireModel]] = {
    Topic.EXECUTOR_REGISTRATIONS: ExecutorRegistration,
    Topic.CLIENT_REGISTRATIONS: ClientRegistration,
    Topic.EXECUTOR_STATUS: ExecutorStatus,
    Topic.LATENCY_MEASUREMENTS: LatencyMeasurement,
    Topic.OBSERVED_LATENCIES: ObservedLatencies,
    Topic.SELECTION_REQUESTS: SelectionRequest,
    Topic.INFERENCE_REQUESTS: InferenceRequest,
    Topic.SELECTION_REPLIES: SelectionReply,
}
"""Every topic a worker consumes (selector: the state topics and selection requests;
companion: client registrations; router: inference requests and its selection replies),
with its message."""

REQUEST_TOPICS = frozenset({Topic.SELECTION_REQUESTS, Topic.INFERENCE_REQUESTS})
"""Topics whose bad records are answered with an error when their reply address is
readable."""

STATE_TOPICS = (
    Topic.EXECUTOR_REGISTRATIONS,
    Topic.CLIENT_REGISTRATIONS,
    Topic.EXECUTOR_STATUS,
    Topic.LATENCY_MEASUREMENTS,
    Topic.OBSERVED_LATENCIES,
)


def kinds_for(topic: Topic) -> list[Kind]:
    """The kinds that make sense on ``topic``.

    Not on client registrations: tombstones (there they deregister: they belong) and
    non-finite numbers (the message has no number field). Wrong keys and forgeries only
    on executor registrations, the one topic whose key and signature are checked (a
    request's key only picks its partition). Selection replies get the kinds a router's
    reply reader must survive.
    """
    kinds: list[Kind] = [k for k in Kind if k not in (Kind.WRONG_KEY, Kind.FORGED)]
    if topic is Topic.EXECUTOR_REGISTRATIONS:
        return list(Kind)
    if topic is Topic.CLIENT_REGISTRATIONS:
        return [k for k in kinds if k not in (Kind.TOMBSTONE, Kind.NON_FINITE)]
    if topic is Topic.SELECTION_REPLIES:
        # A reply without candidates has no number; one above the broker's bound cannot
        # be published at all.
        return [k for k in kinds if k not in (Kind.NON_FINITE, Kind.OVERSIZE)]
    if topic is Topic.OBSERVED_LATENCIES:
        # Its numbers are in the list of samples, where the mutations do not reach (the
        # codec's unit tests refuse a non-finite sample).
        return [k for k in kinds if k is not Kind.NON_FINITE]
    return kinds


@dataclass(frozen=True)
class Context:
    """Where the suite's records point: its catalog and reply addresses, its secret."""

    catalog: Catalog
    secret: bytes
    selection_reply_partition: int
    """Partition of selection-replies the suite reads (not the router's)."""
    router_reply_partition: int
    """The router's partition of selection-replies (hostile replies go there)."""
    limits: dict[Topic, int]
    """The configured record size bound of each topic."""
    allowed_endpoint: str = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Hostile:
    """One record to publish and what must become of it."""

    topic: Topic
    kind: Kind
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    served: bool
    correlation_id: str | None
    """The request's correlation id (requests and replies), else None."""
    partition: int | None = None

    def answerable(self, ctx: Context) -> bool:
        """Whether a rejection must be an error answer rather than a dead letter."""
        # Oversize requests too: the reply address is peeked up to Kafka's record bound,
        # above a worker's own, so their senders hear why.
        return self.topic in REQUEST_TOPICS and answerable(
            self.value, ctx.catalog.name(_reply_topic(self.topic)), DEFAULT_MAX_RECORD_BYTES
        )


def _reply_topic(topic: Topic) -> Topic:
    return Topic.SELECTION_REPLIES if topic is Topic.SELECTION_REQUESTS else Topic.INFERENCE_RESULTS


def answerable(value: bytes | None, reply_topic: str, limit: int) -> bool:
    """A body within ``limit`` that is a JSON object (NaN tokens allowed) naming
    ``reply_topic`` and a correlation id of 1 to 64 characters: its sender is waiting."""
    if value is None or len(value) > limit:
        return False
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        return False
    if not isinstance(document, dict):
        return False
    correlation = document.get("correlation_id")
    return (
        document.get("reply_topic") == reply_topic
        and isinstance(correlation, str)
        and 0 < len(correlation) <= 64
    )


# --- valid documents -----------------------------------------------------------------


def valid_message(
    topic: Topic, rng: random.Random, ctx: Context, serial: int = 0
) -> tuple[str, WireModel]:
    """A realistic valid message for ``topic`` and its record key; ``serial`` makes a
    request's correlation id unique within a run."""
    executor = f"fz-ex-{rng.randrange(40)}"
    client = f"fz-cl-{rng.randrange(40)}"
    correlation = f"fz-{serial}-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
    deadline = utcnow() + timedelta(seconds=60)
    weights = SoftWeights(latency=rng.random(), accuracy=rng.random())
    message: WireModel
    if topic is Topic.EXECUTOR_REGISTRATIONS:
        message = ExecutorRegistration(
            executor_id=executor,
            model_name="fz-model",
            traits=OTHER_TRAITS,
            accuracy=rng.random(),
            endpoint=ctx.allowed_endpoint,
            heartbeat_interval_s=300,
        )
        return executor, message
    if topic is Topic.CLIENT_REGISTRATIONS:
        message = ClientRegistration(client_id=client, probe_url=f"{ctx.allowed_endpoint}/probe")
        return client, message
    if topic is Topic.EXECUTOR_STATUS:
        state = rng.choice([s for s in ModelState if s is not ModelState.END])
        message = ExecutorStatus(
            executor_id=executor, model_state=state, in_flight=rng.randrange(5), errors=0
        )
        return executor, message
    if topic is Topic.LATENCY_MEASUREMENTS:
        message = LatencyMeasurement(
            executor_id=executor,
            client_id=client,
            latency_ms=rng.uniform(0, 100),
            source=LatencySource.PROBE,
        )
        return executor, message
    if topic is Topic.OBSERVED_LATENCIES:
        message = ObservedLatencies(
            executor_id=executor,
            router_id="fz-router",
            samples=[
                ObservedSample(
                    client_id=client,
                    latency_ms=rng.uniform(0, 100),
                    input_size=rng.randrange(1, 20),
                    failed=rng.random() < 0.2,
                )
                for _ in range(rng.randrange(1, 5))
            ],
            released=rng.randrange(3),
        )
        return executor, message
    if topic is Topic.SELECTION_REQUESTS:
        message = SelectionRequest(
            correlation_id=correlation,
            reply_topic=ctx.catalog.name(Topic.SELECTION_REPLIES),
            reply_partition=ctx.selection_reply_partition,
            deadline=deadline,
            client_id="fz-client",
            traits=SERVED_TRAITS,
            weights=weights,
            input_size=rng.randrange(1, 20),
        )
        return "fz-client", message
    if topic is Topic.INFERENCE_REQUESTS:
        message = InferenceRequest(
            correlation_id=correlation,
            reply_topic=ctx.catalog.name(Topic.INFERENCE_RESULTS),
            deadline=deadline,
            client_id="fz-client",
            traits=SERVED_TRAITS,
            weights=weights,
            policy="weighted",
            body={"instances": [rng.randrange(10)]},
        )
        return "fz-client", message
    message = SelectionReply(correlation_id=correlation, status=SelectionStatus.NO_CANDIDATE)
    return correlation, message


# --- the JSON types of a schema's fields ---------------------------------------------

_EXAMPLES: dict[str, Any] = {
    "string": "fz",
    "integer": 7,
    "number": 0.5,
    "boolean": True,
    "null": None,
    "array": [1],
    "object": {"fz": 1},
}


def json_types(node: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """The JSON types ``node`` allows (``number`` includes ``integer``); empty: any."""
    if "$ref" in node:
        return json_types(root["$defs"][node["$ref"].removeprefix("#/$defs/")], root)
    if "anyOf" in node and "type" not in node:
        found: set[str] = set()
        for alternative in node["anyOf"]:
            types = json_types(alternative, root)
            if not types:
                return set()
            found |= types
        return found
    if "enum" in node:
        names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
        return {names[type(v).__name__] for v in node["enum"]}
    kind = node.get("type")
    if kind is None:
        return set()
    types = {kind} if isinstance(kind, str) else set(kind)
    return types | ({"integer"} if "number" in types else set())


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return _resolve(root["$defs"][node["$ref"].removeprefix("#/$defs/")], root)
    for alternative in node.get("anyOf", ()):
        if "properties" in _resolve(alternative, root):
            return _resolve(alternative, root)
    return node


def typed_fields(
    document: dict[str, Any], schema: dict[str, Any]
) -> Iterator[tuple[tuple[str, ...], set[str], bool]]:
    """Every field of ``document`` the schema types, at every level of nested models:
    its path, the JSON types allowed and whether it is required."""

    def walk(
        doc: dict[str, Any], node: dict[str, Any], path: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], set[str], bool]]:
        node = _resolve(node, schema)
        required = set(node.get("required", ()))
        for name, sub in node.get("properties", {}).items():
            if name not in doc:
                continue
            types = json_types(sub, schema)
            if types:
                yield (*path, name), types, name in required
            if isinstance(doc[name], dict):
                yield from walk(doc[name], sub, (*path, name))

    return walk(document, schema, ())


def nested_objects(document: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths of the document's objects that are models (the root, traits, weights, ...),
    not free-form bodies."""
    paths: list[tuple[str, ...]] = [()]
    for path, _, _ in typed_fields(document, schema):
        if isinstance(_at(document, path), dict) and not _free(path, schema):
            paths.append(path)
    return paths


def _free(path: tuple[str, ...], schema: dict[str, Any]) -> bool:
    node: dict[str, Any] = schema
    for step in path:
        node = _resolve(node, schema)["properties"][step]
    return "properties" not in _resolve(node, schema)


def _at(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


# --- building one record -------------------------------------------------------------

_NON_FINITE_MARK = "__fz_non_finite__"


def build(topic: Topic, kind: Kind, seed: int, ctx: Context, serial: int = 0) -> Hostile:
    """The record of ``kind`` for ``topic`` drawn from ``seed`` (``serial``: see
    :func:`valid_message`)."""
    rng = random.Random(seed)
    model = CONSUMED[topic]
    key_text, message = valid_message(topic, rng, ctx, serial)
    document: Any = orjson.loads(encode(message))
    schema = schema_of(model)
    correlation = document.get("correlation_id")
    key: bytes | None = key_text.encode()
    value: bytes | None
    raw = orjson.dumps(document)
    if kind is Kind.VALID or kind is Kind.WRONG_KEY or kind is Kind.FORGED:
        value = raw
        if kind is Kind.WRONG_KEY:
            key = f"{key_text}-other".encode()
    elif kind is Kind.UNKNOWN_FIELDS:
        for path in nested_objects(document, schema):
            _at(document, path)[f"fz_future_{rng.randrange(1000)}"] = {"added": [1, "x"]}
        value = orjson.dumps(document)
    elif kind is Kind.MALFORMED:
        value = rng.choice(
            [
                rng.randbytes(rng.randrange(1, 64)),
                b"",
                b"null",
                b"[]",
                b"42",
                b'"a string"',
                b"{",
                b"[" * 5000 + b"]" * 5000,
                b"\xff\xfe" + raw,
                raw.replace(b"{", b"(", 1),
            ]
        )
    elif kind is Kind.TRUNCATED:
        value = raw[: rng.randrange(1, len(raw))]
    elif kind is Kind.OVERSIZE:
        document["fz_padding"] = "x" * (ctx.limits[topic] + 1024)
        value = orjson.dumps(document)
    elif kind is Kind.WRONG_TYPE:
        path, types, _ = rng.choice(list(typed_fields(document, schema)))
        wrong = [name for name in _EXAMPLES if name not in types]
        parent = _at(document, path[:-1])
        parent[path[-1]] = _EXAMPLES[rng.choice(wrong)]
        value = orjson.dumps(document)
    elif kind is Kind.MISSING_FIELD:
        required = [p for p, _, needed in typed_fields(document, schema) if needed]
        path = rng.choice(required)
        del _at(document, path[:-1])[path[-1]]
        value = orjson.dumps(document)
    elif kind is Kind.NON_FINITE:
        numbers = [p for p, types, _ in typed_fields(document, schema) if "number" in types]
        path = rng.choice(numbers)
        _at(document, path[:-1])[path[-1]] = _NON_FINITE_MARK
        token = rng.choice([b"NaN", b"Infinity", b"-Infinity"])
        value = orjson.dumps(document).replace(f'"{_NON_FINITE_MARK}"'.encode(), token)
    elif kind is Kind.SCHEMA_VERSION:
        document["schema_version"] = rng.choice([0, 2, 99, -1, 2**31])
        value = orjson.dumps(document)
    else:  # a tombstone where none belongs (or, on registrations, an unsigned one)
        value = None
    headers: list[tuple[str, bytes]] = []
    if topic is Topic.EXECUTOR_REGISTRATIONS and value is not None:
        # Signed (so a rejection is for the defect itself), a forgery with another id's key.
        signer = f"fz-evil-{seed}" if kind is Kind.FORGED else key_text
        signature = sign(executor_key(ctx.secret, signer), key or b"", value, signed_at())
        headers.append(signature.header())
    partition = ctx.router_reply_partition if topic is Topic.SELECTION_REPLIES else None
    return Hostile(
        topic=topic,
        kind=kind,
        key=key,
        value=value,
        headers=headers,
        served=kind in SERVED_KINDS,
        correlation_id=correlation if isinstance(correlation, str) else None,
        partition=partition,
    )


_CLOCK = itertools.count(int(time.time() * 1000))
"""Signing times, increasing in the order records are built (hence published): each
executor's records must be signed later than the one in force."""


def signed_at() -> int:
    """The next signing time (epoch milliseconds)."""
    return next(_CLOCK)


# --- counting ------------------------------------------------------------------------


@dataclass
class TopicTally:
    """What became of the records tried on one topic."""

    tried: int = 0
    served: int = 0
    dead_lettered: int = 0
    error_answers: int = 0
    dropped: int = 0
    """Bad answers (selection replies) a reader logs and drops: nobody to answer."""


@dataclass
class Tally:
    """Per-topic counts of a run, and the workers' crashes (must stay 0)."""

    topics: dict[str, TopicTally] = field(default_factory=dict)
    crashes: int = 0
    batches: int = 0

    def of(self, topic: Topic) -> TopicTally:
        return self.topics.setdefault(topic.value, TopicTally())

    def add(self, other: Tally) -> None:
        """Count ``other``'s records too (another xdist worker's)."""
        for name, theirs in other.topics.items():
            ours = self.topics.setdefault(name, TopicTally())
            for f in dataclasses.fields(TopicTally):
                setattr(ours, f.name, getattr(ours, f.name) + getattr(theirs, f.name))
        self.crashes += other.crashes
        self.batches += other.batches

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON document (what ``$MULAMBDA_FUZZ_RESULTS`` holds)."""
        return {
            "topics": {name: dataclasses.asdict(t) for name, t in self.topics.items()},
            "crashes": self.crashes,
            "batches": self.batches,
            "tried": self.tried,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Tally:
        """The counts :meth:`to_json` wrote."""
        return cls(
            topics={name: TopicTally(**t) for name, t in document["topics"].items()},
            crashes=document["crashes"],
            batches=document["batches"],
        )

    @property
    def tried(self) -> int:
        return sum(t.tried for t in self.topics.values())

    def rows(self) -> list[str]:
        """The closing table, one line per topic and a total."""
        head = f"{'topic':<24}{'tried':>8}{'served':>8}{'dead-lettered':>15}{'error answers':>15}"
        lines = [head + f"{'dropped':>9}"]
        for name, t in sorted(self.topics.items()):
            lines.append(
                f"{name:<24}{t.tried:>8}{t.served:>8}{t.dead_lettered:>15}"
                f"{t.error_answers:>15}{t.dropped:>9}"
            )
        total = TopicTally(
            *(
                sum(getattr(t, f.name) for t in self.topics.values())
                for f in dataclasses.fields(TopicTally)
            )
        )
        lines.append(
            f"{'all':<24}{total.tried:>8}{total.served:>8}{total.dead_lettered:>15}"
            f"{total.error_answers:>15}{total.dropped:>9}"
        )
        lines.append(f"worker crashes: {self.crashes}; batches: {self.batches}")
        return lines
