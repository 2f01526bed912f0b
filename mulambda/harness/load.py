"""Open-loop load: inference requests at a target rate, whatever the platform does.

The schedule is fixed before the first send (:func:`arrival_offsets`: Poisson or fixed
rate, bounded in count and duration), and a request is due at its offset whether or not
earlier ones were answered, so a stalled platform meets the same load a healthy one
does; latency counts from the *scheduled* time, so a generator that fell behind is not
mistaken for a fast platform (coordinated omission).

Each request is the JSON a non-Python SDK would write by hand (:func:`request_json`),
equivalent to :class:`mulambda.wire.events.InferenceRequest`, with a unique
``message_id`` and ``correlation_id``, an absolute deadline and the catalog's
inference-results topic as ``reply_topic``. Requests are keyed by client id, and the
clients are chosen (:func:`clients_covering`) so that every partition of the request
topic gets its share: a kill of the router owning some partitions then always matters.

The producer is deliberately *not* MuLambda's: plain aiokafka, acks=all, no idempotence,
a delivery timeout (2 min) longer than any broker restart. The harness must not share
the failure modes it measures (an idempotent producer stuck after a broker restart); a
retry that writes a request twice is detected on the request topic instead (see
:mod:`mulambda.harness.verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from mulambda.harness.verify import SentRequest
from mulambda.kafka import PlainProducer, default_partition, plain_producer, start_bounded
from mulambda.runtime.lifecycle import Lifecycle

log = logging.getLogger(__name__)

Arrivals = Literal["poisson", "fixed"]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to send: rate, duration, count bound, deadline and the request's content."""

    rate: float = 100.0
    """Requests per second."""
    duration_s: float = 20.0
    """Seconds of sending."""
    arrivals: Arrivals = "poisson"
    """Poisson arrivals (exponential gaps) or a fixed interval of ``1 / rate``."""
    max_requests: int | None = None
    """Upper bound on the count (default: 20% over ``rate * duration_s``)."""
    deadline_s: float = 10.0
    """Each request's deadline, from its scheduled send time."""
    seed: int | None = None
    """Seed of the arrival schedule, for repeatable runs."""
    clients_per_partition: int = 2
    """Distinct client ids (record keys) per request-topic partition."""
    model_type: str = "classification"
    input_format: str = "feature"
    output_format: str = "confidence"
    weights: tuple[float, float] = (0.5, 0.5)
    """Importance of latency and of accuracy."""
    body: dict[str, Any] = field(default_factory=lambda: {"instances": [0, 1]})
    """The TF Serving request body."""

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, not {self.rate}")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ValueError(f"duration must be a positive number, not {self.duration_s}")
        if self.deadline_s <= 0:
            raise ValueError(f"deadline must be positive, not {self.deadline_s}")

    @property
    def bound(self) -> int:
        """The most requests this spec may send."""
        if self.max_requests is not None:
            return max(0, self.max_requests)
        return math.ceil(self.rate * self.duration_s * 1.2) + 10


def arrival_offsets(spec: LoadSpec, rng: random.Random | None = None) -> list[float]:
    """Send times in seconds from the start, within the duration and the count bound."""
    rng = rng or random.Random(spec.seed)  # noqa: S311 - a schedule, not a secret
    offsets: list[float] = []
    if spec.arrivals == "fixed":
        count = min(spec.bound, math.ceil(spec.rate * spec.duration_s - 1e-9))
        return [i / spec.rate for i in range(count)]
    t = 0.0
    for _ in range(spec.bound):
        t += rng.expovariate(spec.rate)
        if t >= spec.duration_s:
            break
        offsets.append(t)
    return offsets


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as in Java)."""
    return default_partition(key.encode(), partitions)


def clients_covering(
    partitions: int, per_partition: int = 2, prefix: str = "bench-client-", limit: int = 10_000
) -> list[str]:
    """Client ids such that each of ``partitions`` partitions gets ``per_partition`` of them."""
    wanted = dict.fromkeys(range(partitions), per_partition)
    chosen: list[str] = []
    for n in range(limit):
        if not any(wanted.values()):
            break
        name = f"{prefix}{n}"
        p = partition_of(name, partitions)
        if wanted[p]:
            wanted[p] -= 1
            chosen.append(name)
    if any(wanted.values()):
        raise ValueError(f"no {per_partition} client ids per partition within {limit} names")
    return chosen


def _iso(moment: datetime) -> str:
    # What a hand-written SDK sends: ISO 8601, UTC, millisecond precision, "Z".
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def request_json(
    spec: LoadSpec,
    *,
    message_id: str,
    correlation_id: str,
    client_id: str,
    reply_topic: str,
    now: datetime,
    deadline: datetime,
) -> bytes:
    """One inference request as JSON bytes, written field by field as an SDK would."""
    latency, accuracy = spec.weights
    document = {
        "schema_version": 1,
        "message_id": message_id,
        "timestamp": _iso(now),
        "correlation_id": correlation_id,
        "reply_topic": reply_topic,
        "deadline": _iso(deadline),
        "client_id": client_id,
        "traits": {
            "model_type": spec.model_type,
            "input_format": spec.input_format,
            "output_format": spec.output_format,
        },
        "weights": {"latency": latency, "accuracy": accuracy},
        "verb": "predict",
        "body": spec.body,
    }
    return orjson.dumps(document)


def new_id() -> str:
    """32 random hex characters."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What a run of the generator did."""

    scheduled: int
    acked: int
    failed: int
    started_s: float
    """Clock time of offset 0."""
    last_scheduled_s: float
    """Scheduled time of the last request sent."""
    ended_s: float
    """Clock time the last acknowledgement (or failure) came in."""


class LoadGenerator(Lifecycle):
    """Publishes a :class:`LoadSpec` open loop; reports each request to ``on_sent``."""

    def __init__(
        self,
        bootstrap_servers: str,
        spec: LoadSpec,
        *,
        request_topic: str,
        reply_topic: str,
        partitions: int,
        on_sent: Callable[[SentRequest], None],
        clock: Callable[[], float] = time.monotonic,
        delivery_timeout_s: float = 120.0,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self.spec = spec
        self._request_topic = request_topic
        self._reply_topic = reply_topic
        self.clients: Sequence[str] = clients_covering(partitions, spec.clients_per_partition)
        self._on_sent = on_sent
        self._clock = clock
        self._delivery_timeout_s = delivery_timeout_s
        self._producer: PlainProducer | None = None

    async def start(self) -> None:
        """Connect the producer."""
        if self._producer is not None:
            return
        producer = plain_producer(
            self._bootstrap,
            client_id="mulambda-bench-load",
            request_timeout_s=self._delivery_timeout_s,
        )
        await start_bounded(producer, "load producer", 15.0)
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # closing a broken client
                await producer.stop()

    async def run(self, stop: asyncio.Event | None = None) -> LoadSummary:
        """Send the schedule (up to ``stop``, if given and set); return once every send
        was acknowledged or failed."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("load generator is not started")
        offsets = arrival_offsets(self.spec)
        pending: set[asyncio.Future[Any]] = set()
        counts = {"acked": 0, "failed": 0}
        start = self._clock()
        wall = datetime.now(UTC)
        last = start
        for i, offset in enumerate(offsets):
            due = start + offset
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop is not None and stop.is_set():
                break
            last = due
            client = self.clients[i % len(self.clients)]
            message_id, correlation_id = new_id(), new_id()
            deadline = wall + timedelta(seconds=offset + self.spec.deadline_s)
            value = request_json(
                self.spec,
                message_id=message_id,
                correlation_id=correlation_id,
                client_id=client,
                reply_topic=self._reply_topic,
                now=datetime.now(UTC),
                deadline=deadline,
            )
            base = SentRequest(
                message_id=message_id,
                correlation_id=correlation_id,
                scheduled_s=due,
                deadline_s=due + self.spec.deadline_s,
                sent_s=self._clock(),
            )
            try:
                delivery = await producer.send(self._request_topic, value, key=client.encode())
            except Exception as exc:  # a refused send is counted, never raised
                self._report(base, None, exc, counts)
                continue
            delivery.add_done_callback(functools.partial(self._delivered, base, counts))
            pending.add(delivery)
        if pending:
            await asyncio.wait(pending, timeout=self._delivery_timeout_s + 5)
        for fut in pending:
            if not fut.done():
                fut.cancel()
        return LoadSummary(
            scheduled=len(offsets),
            last_scheduled_s=last,
            acked=counts["acked"],
            failed=counts["failed"],
            started_s=start,
            ended_s=self._clock(),
        )

    def _delivered(
        self, base: SentRequest, counts: dict[str, int], fut: asyncio.Future[Any]
    ) -> None:
        if fut.cancelled():
            self._report(base, None, TimeoutError("no acknowledgement"), counts)
        elif fut.exception() is not None:
            self._report(base, None, fut.exception(), counts)
        else:
            self._report(base, fut.result().partition, None, counts)

    def _report(
        self,
        base: SentRequest,
        partition: int | None,
        error: BaseException | None,
        counts: dict[str, int],
    ) -> None:
        if error is None:
            counts["acked"] += 1
            request = SentRequest(
                base.message_id,
                base.correlation_id,
                base.scheduled_s,
                base.deadline_s,
                base.sent_s,
                partition,
                acked_s=self._clock(),
            )
        else:
            counts["failed"] += 1
            log.warning("request %s not sent: %r", base.message_id, error)
            request = SentRequest(
                base.message_id,
                base.correlation_id,
                base.scheduled_s,
                base.deadline_s,
                base.sent_s,
                None,
                acked=False,
                send_error=f"{type(error).__name__}: {error}",
            )
        self._on_sent(request)
