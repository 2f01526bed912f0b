"""Wire models of every message MuLambda puts on Kafka.

Pure data: this module imports no I/O library. JSON Schemas in ``topics/schemas/`` are
generated from these classes (``mulambda topics generate``) and a test fails when they
drift. Every message carries ``schema_version``, ``message_id`` and ``timestamp``;
requests also carry ``correlation_id``, ``reply_topic`` and ``deadline``.

Compatibility rule: add optional fields freely; anything else bumps ``schema_version``.
Unknown fields are ignored on decode, at every level (the nested ``traits``, ``weights``,
``slo``, ``launch`` and candidates too), so older consumers survive newer producers. A
message of a ``schema_version`` this build does not read is refused, never guessed at.
The producer SDK refuses unknown keys in what an application passes it
(:mod:`mulambda.routing.client`), where they are typos rather than newer fields.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
"""The schema version this build writes."""

SUPPORTED_SCHEMA_VERSIONS = range(1, SCHEMA_VERSION + 1)
"""Versions this build reads; a message of any other version is refused, never guessed at."""

Identifier = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$")
]
"""Ids of executors, clients and models: printable, no spaces, safe in Redis keys."""

ModelName = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
"""Model names travel in TF Serving URL paths, so no ``/`` or ``:``."""

Importance = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
"""A soft-criterion weight in [0, 1]; NaN and infinities are refused."""


def new_message_id() -> str:
    """A random 128-bit id as 32 hex characters."""
    return os.urandom(16).hex()


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _with_offset(field: str, value: datetime) -> datetime:
    """``value`` if it says its UTC offset: JSON Schema's ``date-time`` (RFC 3339) needs one."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} needs a UTC offset (RFC 3339, e.g. 2026-01-01T12:00:00Z)")
    return value


class WireModel(BaseModel):
    """Base of every message: frozen, unknown fields ignored, envelope fields present."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    schema_version: int = Field(
        default=SCHEMA_VERSION,
        json_schema_extra={
            "minimum": SUPPORTED_SCHEMA_VERSIONS[0],
            "maximum": SUPPORTED_SCHEMA_VERSIONS[-1],
        },
    )
    """Version of this message's schema; bumped on incompatible change."""
    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=64)
    """Unique id of this message (not of the request it answers)."""
    timestamp: datetime = Field(default_factory=utcnow)
    """When the message was produced: RFC 3339 with a UTC offset, like ``deadline``."""

    type_name: ClassVar[str] = "message"

    @field_validator("timestamp")
    @classmethod
    def _timestamp_has_offset(cls, timestamp: datetime) -> datetime:
        return _with_offset("timestamp", timestamp)

    @field_validator("schema_version")
    @classmethod
    def _known_schema_version(cls, version: int) -> int:
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            first, last = SUPPORTED_SCHEMA_VERSIONS[0], SUPPORTED_SCHEMA_VERSIONS[-1]
            raise ValueError(
                f"unsupported schema_version {version}; this build reads {first} to {last}"
            )
        return version


class RequestModel(WireModel):
    """A message that expects an answer on ``reply_topic``."""

    correlation_id: str = Field(default_factory=new_message_id, min_length=1, max_length=64)
    """Ties the answer to this request; echoed in the reply."""
    reply_topic: str = Field(min_length=1, max_length=249)
    """Full topic name the answer goes to."""
    reply_partition: int | None = Field(default=None, ge=0)
    """Partition of ``reply_topic`` the requester listens on; None lets the key decide."""
    deadline: datetime
    """Absolute time after which the answer is useless and may be dropped: RFC 3339 with a
    UTC offset (``2026-01-01T12:00:00Z`` or ``...+01:00``); a time without one is refused."""

    @field_validator("deadline")
    @classmethod
    def _deadline_has_offset(cls, deadline: datetime) -> datetime:
        return _with_offset("deadline", deadline)

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the deadline has passed."""
        return (now or utcnow()) >= self.deadline


def deadline_in(seconds: float) -> datetime:
    """An absolute deadline ``seconds`` from now."""
    return utcnow() + timedelta(seconds=seconds)


# --- traits and criteria -------------------------------------------------------------


class Traits(BaseModel):
    """Hard criteria: an executor is a candidate only if all three are equal."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_type: str = Field(min_length=1, max_length=100)
    """What the model does, e.g. ``image-classification``, ``sentiment``."""
    input_format: str = Field(min_length=1, max_length=100)
    """Shape/encoding of inputs, e.g. ``tensor-f32[13]``, ``text``."""
    output_format: str = Field(min_length=1, max_length=100)
    """Shape/encoding of outputs, e.g. ``class-probabilities[3]``."""

    def key(self) -> tuple[str, str, str]:
        """The tuple the selector indexes executors by."""
        return (self.model_type, self.input_format, self.output_format)


class SoftWeights(BaseModel):
    """Soft criteria: how much the client cares about latency versus accuracy."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    latency: Importance = 0.5
    """Importance of a low estimated latency, in [0, 1]."""
    accuracy: Importance = 0.5
    """Importance of a high accuracy, in [0, 1]."""


class Slo(BaseModel):
    """Optional hard service-level objectives of one request."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Candidates whose estimated latency exceeds this are excluded."""
    min_accuracy: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    """Candidates whose registered accuracy is below this are excluded."""


# --- executors and clients -----------------------------------------------------------


class LaunchSpec(BaseModel):
    """How an administrator asks the launcher (``mulambda launcher``) to run an executor.

    A registration carrying one is a *launch request*, never a selectable executor: the
    selector ignores it (and forgets any executor registered under its id). Its
    ``executor_id`` is the launch id L; the launcher runs ``replicas`` executors whose
    companions register ``L-0``, ``L-1``, ... with the launch's model, traits and accuracy
    and their own endpoints, so every replica is selectable only once it runs and one
    replica's deregistration leaves the others alone. A tombstone for L (or a registration
    without a launch spec under L) removes what the launcher runs for it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    replicas: int = Field(default=1, ge=1, le=100)
    """Executors to run, one executor id each (``<launch id>-<ordinal>``)."""
    image: str = Field(default="tensorflow/serving:2.18.0", min_length=1, max_length=500)
    """Serving image (Kubernetes backend); the local backend runs ``mulambda executor
    serve`` instead."""
    mulambda_image: str | None = Field(default=None, min_length=1, max_length=500)
    """Image of the model-fetching init container and the companion sidecar (Kubernetes
    backend); None uses the launcher's ``MULAMBDA_LAUNCHER_MULAMBDA_IMAGE``."""
    cpu: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?m?$", max_length=20)
    """CPU request of the serving container, Kubernetes notation (``500m``, ``2``)."""
    memory: str | None = Field(
        default=None, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMk]i?)?$", max_length=20
    )
    """Memory request of the serving container, Kubernetes notation (``512Mi``)."""


class ExecutorProtocol(StrEnum):
    """The inference API an executor speaks; the router calls it in that protocol."""

    TFSERVING_REST = "tfserving-rest"
    """TensorFlow Serving's REST API (``/v1/models/{name}:predict``)."""
    OIP_V2 = "oip-v2"
    """Open Inference Protocol v2 over REST (``/v2/models/{name}/infer``: MLServer,
    Triton, KServe)."""


class ExecutorRegistration(WireModel):
    """An executor announces itself (key: executor id; a tombstone deregisters)."""

    type_name: ClassVar[str] = "executor-registration"

    executor_id: Identifier
    """Unique id of this executor (one TF Serving instance serving one model)."""
    model_name: ModelName
    """Name TF Serving serves the model under (the ``{name}`` in its URLs)."""
    model_version: int | None = Field(default=None, ge=0)
    """Pinned version; None serves TF Serving's default (the highest)."""
    traits: Traits
    """Hard traits the model offers."""
    accuracy: float = Field(ge=0, le=1, allow_inf_nan=False)
    """Accuracy the administrator vouches for, in [0, 1]."""
    endpoint: str = Field(pattern=r"^https?://[^\s/]+(:\d+)?(/[^\s]*)?$", max_length=500)
    """Base URL of the executor's REST API, e.g. ``http://10.0.0.5:8501``."""
    protocol: ExecutorProtocol = ExecutorProtocol.TFSERVING_REST
    """Inference API spoken at ``endpoint``; absent (older builds) means TF Serving REST."""
    model_data_delay_ms_per_element: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Extra latency per input element the model adds (the weighted score's size term)."""
    node: str = Field(default="local", min_length=1, max_length=200)
    """Node (machine) the executor runs on."""
    zone: str = Field(default="local", min_length=1, max_length=200)
    """Zone/region; used for latency fallbacks."""
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    """How often the companion publishes status; the selector expires it after a few."""
    launch: LaunchSpec | None = None
    """Set only on an administrator's launch request (see :class:`LaunchSpec`): then this
    is not an executor, and ``endpoint`` is not dialled (any valid URL will do)."""


class ClientRegistration(WireModel):
    """A client announces where companions can probe it (key: client id)."""

    type_name: ClassVar[str] = "client-registration"

    client_id: Identifier
    """Unique id of the client (an application instance or router)."""
    probe_url: str = Field(pattern=r"^https?://[^\s/]+(:\d+)?(/[^\s]*)?$", max_length=500)
    """URL companions GET to measure round-trip latency to this client."""
    zone: str = Field(default="local", min_length=1, max_length=200)
    """Zone/region of the client."""


class ModelState(StrEnum):
    """TF Serving model version states, plus UNKNOWN when status could not be read."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"
    UNKNOWN = "UNKNOWN"


class LaunchAction(StrEnum):
    """What the launcher did about a launch request (on its status events)."""

    CREATED = "created"
    """The launch's objects or processes did not exist and were created."""
    UPDATED = "updated"
    """Some were created, changed or removed to match the request."""
    UNCHANGED = "unchanged"
    """Everything already matched the request."""
    DELETED = "deleted"
    """The request was withdrawn; everything run for it was removed."""
    FAILED = "failed"
    """The request is invalid or could not be carried out; ``detail`` says why."""


class ExecutorStatus(WireModel):
    """Heartbeat of an executor (key: executor id)."""

    type_name: ClassVar[str] = "executor-status"

    executor_id: Identifier
    """Executor this heartbeat is about."""
    model_state: ModelState
    """State read from TF Serving's status endpoint."""
    in_flight: int = Field(default=0, ge=0)
    """Requests the executor is working on now."""
    errors: int = Field(default=0, ge=0)
    """Errors since the previous heartbeat (status probes and inference)."""
    detail: str | None = Field(default=None, max_length=2000)
    """Why the state is not AVAILABLE, when known."""
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    """Interval until the next heartbeat; staleness is judged against it."""
    launch_action: LaunchAction | None = None
    """Set on the launcher's report about a launch request (key: the launch id, which the
    selector knows no executor by): what it did; ``detail`` names the objects or the
    reason of a failure. None on companions' heartbeats."""


class LatencySource(StrEnum):
    """Where a latency figure comes from."""

    PROBE = "probe"
    """A companion's round trip to the client's probe URL."""
    OBSERVED = "observed"
    """A router's measured end-to-end inference time."""


class LatencyMeasurement(WireModel):
    """Latency between an executor and a client (key: executor id)."""

    type_name: ClassVar[str] = "latency-measurement"

    executor_id: Identifier
    """Executor end of the measurement."""
    client_id: Identifier
    """Client end of the measurement."""
    latency_ms: float = Field(ge=0, le=3_600_000, allow_inf_nan=False)
    """Milliseconds measured."""
    source: LatencySource = LatencySource.PROBE
    """Probe (network only) or observed (network plus service time)."""
    input_size: int | None = Field(default=None, ge=0)
    """For observed latencies: input elements of the request measured."""
    failed: bool = False
    """For observed latencies: the call failed (an error answer, no answer in time) after
    ``latency_ms``. It teaches no service time, but the request is no longer the
    router's, so the selector stops counting it as load it dispatched. Readers before
    this field ignore it (and count such a call as in flight until their pending timeout)."""


MAX_OBSERVED_SAMPLES = 200
"""Samples one :class:`ObservedLatencies` record holds at most (with 200-character client
ids that is still under the state records' 64 KiB bound)."""


class ObservedSample(BaseModel):
    """One routed call as an :class:`ObservedLatencies` batch carries it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    client_id: Identifier
    """The client whose request it was."""
    latency_ms: float = Field(ge=0, le=3_600_000, allow_inf_nan=False)
    """The call's duration as the router measured it."""
    input_size: int | None = Field(default=None, ge=0)
    """Input elements of the request."""
    failed: bool = False
    """The call failed after ``latency_ms`` (see :attr:`LatencyMeasurement.failed`)."""


class ObservedLatencies(WireModel):
    """A router's observed calls to one executor over a short window, oldest first (key:
    executor id): what one observed :class:`LatencyMeasurement` per call says, in one
    record."""

    type_name: ClassVar[str] = "observed-latencies"

    executor_id: Identifier
    """The executor called."""
    router_id: str | None = Field(default=None, max_length=200)
    """The router that made the calls."""
    samples: list[ObservedSample] = Field(default_factory=list, max_length=MAX_OBSERVED_SAMPLES)
    """The calls, in the order they ended."""
    released: int = Field(default=0, ge=0, le=1_000_000)
    """Leased dispatches to this executor the router did not make (its lease ended first):
    the selector stops counting them as load, as it does a failed call."""


# --- selection -----------------------------------------------------------------------

MAX_LEASE_SLOTS = 256
"""Most requests one selection lease may rank."""


class LeaseAsk(BaseModel):
    """A router asking for a lease: rankings for the next ``slots`` requests like this one,
    expected ``spacing_ms`` apart (see :class:`SelectionReply.lease`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    slots: int = Field(ge=1, le=MAX_LEASE_SLOTS)
    """Requests to rank, this one first."""
    spacing_ms: float = Field(default=0.0, ge=0, le=60_000, allow_inf_nan=False)
    """Expected time between two of them: slot ``i`` is ranked as of ``i * spacing_ms``
    from now, with the load of the slots before it."""


class SelectionRequest(RequestModel):
    """Ask the selector for the best executors (key: client id)."""

    type_name: ClassVar[str] = "selection-request"

    client_id: Identifier
    """Requesting client; its measured latencies drive the latency estimate."""
    traits: Traits
    """Hard criteria; never violated."""
    weights: SoftWeights = Field(default_factory=SoftWeights)
    """Soft criteria."""
    input_size: int = Field(default=1, ge=0, le=1_000_000_000)
    """Elements in the request's input (the size term of the latency estimate)."""
    slo: Slo | None = None
    """Optional hard SLOs (the adaptive policy honours them)."""
    policy: str | None = Field(default=None, max_length=50)
    """Policy name; None uses the selector's default."""
    top_k: int = Field(default=3, ge=1, le=100)
    """How many ranked candidates to return (for failover)."""
    answer_by: datetime | None = None
    """When the executor's answer must be back: the inference request's deadline (the
    selection's own ``deadline`` only bounds the reply). The adaptive policy leaves out
    candidates whose estimated latency ends after it and, when none is left, answers
    ``no_candidate`` (``eliminated_by="deadline"``) at once. None: no such bound (the
    field is optional; requesters and selectors before it neither send nor read it)."""
    lease: LeaseAsk | None = None
    """Ask for a lease (rankings for this and the next requests like it); None: this
    request only. Selectors before the field answer this request only."""

    @field_validator("answer_by")
    @classmethod
    def _answer_by_has_offset(cls, answer_by: datetime | None) -> datetime | None:
        return None if answer_by is None else _with_offset("answer_by", answer_by)


class Candidate(BaseModel):
    """One executor offered by a selection, best first."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    executor_id: str
    """Executor id."""
    endpoint: str
    """Base URL of the executor's REST API."""
    protocol: ExecutorProtocol = ExecutorProtocol.TFSERVING_REST
    """Inference API spoken at ``endpoint`` (the registration's)."""
    model_name: str
    """Model name in the executor's URLs."""
    model_version: int | None = None
    """Pinned version, if any."""
    score: float
    """Policy score (higher is better; comparable only within one reply)."""
    estimated_latency_ms: float | None = None
    """The policy's latency estimate, when it makes one."""
    accuracy: float
    """Registered accuracy."""


class SelectionStatus(StrEnum):
    """Outcome of a selection."""

    OK = "ok"
    NO_CANDIDATE = "no_candidate"
    ERROR = "error"


class SelectionReply(WireModel):
    """The selector's answer (sent to the request's reply topic and partition)."""

    type_name: ClassVar[str] = "selection-reply"

    correlation_id: str = Field(min_length=1, max_length=64)
    """Echo of the request's correlation id."""
    status: SelectionStatus
    """ok, no_candidate or error."""
    policy: str | None = None
    """Policy that answered."""
    candidates: list[Candidate] = Field(default_factory=list)
    """Ranked candidates, best first (empty unless ok)."""
    eliminated_by: str | None = None
    """For no_candidate: the criterion that removed the last candidates."""
    error: str | None = None
    """For error / no_candidate: a human-readable reason."""
    selector_id: str | None = None
    """Which selector instance answered."""
    lease: list[list[Annotated[int, Field(ge=0, le=100)]]] | None = Field(
        default=None, max_length=MAX_LEASE_SLOTS
    )
    """For an ``ok`` answer to a :class:`LeaseAsk`: the ranking of each leased request, in
    the order they are to be dispatched, as indexes into ``candidates`` (whose order is the
    first slot's). The selector counted every slot's first candidate as load: a router
    reports the slots it did not use (:attr:`ObservedLatencies.released`). None: the
    reply ranks one request. (Routers ignore a slot that is empty or names no candidate.)"""


# --- inference -----------------------------------------------------------------------


InferenceVerb = Literal["predict", "classify", "regress"]

PAYLOAD_KEYS = ("instances", "inputs", "examples")
"""An inference request's body holds at least one of these (TF Serving's and OIP's)."""


class InferenceRequest(RequestModel):
    """An application's inference request; the router selects and calls an executor."""

    type_name: ClassVar[str] = "inference-request"

    client_id: Identifier
    """Requesting client."""
    traits: Traits
    """Hard criteria."""
    weights: SoftWeights = Field(default_factory=SoftWeights)
    """Soft criteria."""
    slo: Slo | None = None
    """Optional SLOs."""
    policy: str | None = Field(default=None, max_length=50)
    """Selection policy; None uses the selector's default."""
    verb: InferenceVerb = "predict"
    """TF Serving API verb."""
    body: dict[str, Any] = Field(
        json_schema_extra={"anyOf": [{"required": [key]} for key in PAYLOAD_KEYS]}
    )
    """The request body: TF Serving's (``instances``/``inputs`` or ``examples``), or an Open
    Inference Protocol v2 one (``inputs`` a list of typed tensors); the result's ``output``
    is in the same dialect, whichever protocol the executor speaks."""
    input_size: int | None = Field(default=None, ge=0)
    """Input elements; derived from the body when None."""

    @field_validator("body")
    @classmethod
    def _body_has_payload(cls, body: dict[str, Any]) -> dict[str, Any]:
        keys = set(PAYLOAD_KEYS) & body.keys()
        if not keys:
            raise ValueError("body needs 'instances', 'inputs' or 'examples'")
        return body


class InferenceStatus(StrEnum):
    """Outcome of an inference."""

    OK = "ok"
    ERROR = "error"


class InferenceResult(WireModel):
    """The router's answer to an inference request."""

    type_name: ClassVar[str] = "inference-result"

    correlation_id: str = Field(min_length=1, max_length=64)
    """Echo of the request's correlation id."""
    request_id: str | None = Field(default=None, max_length=64)
    """The ``message_id`` of the request this answers: unique per request, the same on a
    redelivery, so a reader that sees two results with one ``request_id`` may drop the second
    (see the delivery guarantee in the README). None only from builds before it existed."""
    status: InferenceStatus
    """ok or error."""
    executor_id: str | None = None
    """Executor that answered (or failed last)."""
    model_name: str | None = None
    """Model that answered."""
    output: dict[str, Any] | None = None
    """TF Serving's response body (``predictions``/``outputs``/``results``)."""
    error: str | None = None
    """Reason for an error status."""
    error_code: int | None = None
    """HTTP status from the executor, when there was one."""
    latency_ms: float | None = Field(default=None, ge=0)
    """Time from the router's receipt to the result."""
    call_ms: float | None = Field(default=None, ge=0)
    """Duration of the executor call that produced ``output``, as the router measured it
    (request sent to response read); ``latency_ms`` minus this is the routing overhead.
    None on an error result."""
    attempts: int = Field(default=1, ge=0)
    """Executors tried."""
    selection: Literal["fresh", "leased", "cached"] | None = None
    """Whether the executors tried came from a selection made for this request (fresh), a
    slot of a selection lease the router holds for requests like it (leased), or from the
    router's recent ranking for the same client, traits and weights (cached, used when the
    selector did not answer in time); None when no selection was needed."""


# --- dead letters --------------------------------------------------------------------


class DeadLetter(WireModel):
    """A record MuLambda could not handle, kept with the reason (key: original key)."""

    type_name: ClassVar[str] = "dead-letter"

    topic: str
    """Topic the record came from."""
    partition: int = Field(ge=0)
    """Partition it came from."""
    offset: int = Field(ge=0)
    """Its offset there."""
    original_key: bytes | None = None
    """The record's key, base64 on the wire."""
    original_value: bytes | None = None
    """The record's value bytes, base64 on the wire."""
    reason: str = Field(min_length=1, max_length=4000)
    """Why it was dead-lettered."""
    error_type: str | None = None
    """Name of the error class."""
    consumer_group: str | None = None
    """Group that gave up on it."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")


ALL_MESSAGE_TYPES: tuple[type[WireModel], ...] = (
    ExecutorRegistration,
    ClientRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    ObservedLatencies,
    SelectionRequest,
    SelectionReply,
    InferenceRequest,
    InferenceResult,
    DeadLetter,
)
"""Every message type; the topic catalog maps topics onto these by ``type_name``."""

MESSAGE_TYPES: dict[str, type[WireModel]] = {m.type_name: m for m in ALL_MESSAGE_TYPES}
