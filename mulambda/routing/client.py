"""The producer SDK: :class:`Client` publishes inference requests and returns their results.

::

    async with mulambda.Client(bootstrap_servers="127.0.0.1:9092", client_id="app") as client:
        result = await client.infer(
            traits={"model_type": "classification", "input_format": "feature",
                    "output_format": "confidence"},
            weights={"latency": 0.8, "accuracy": 0.2},
            instances=[0, 1],
            deadline=5.0,
        )

How it works
    A client is a :class:`~mulambda.routing.requester.Requester` of InferenceRequest →
    InferenceResult: it reads one partition of the inference-results topic (its own,
    derived from its instance id or pinned with ``reply_partition``), positioned before
    the first request is sent, and matches results to waiting calls by correlation id in
    a dict, so thousands of :meth:`Client.infer` calls may wait at once on one client.
    Every request gets a fresh correlation id; its ``message_id`` is the request id
    results echo as ``request_id``.

Results no call waits for
    Results of :meth:`Client.submit` (and anything else arriving on the client's reply
    partition that no :meth:`Client.infer` call awaits) are yielded by
    :meth:`Client.results`, each ``request_id`` once: results are delivered at least once
    (README, "Delivery guarantees"), so a bounded memory of the last ``seen_memory``
    request ids drops second copies. Duplicates and late copies of results an
    ``infer`` call already returned (or gave up on) are dropped too.

Broker restarts
    The producer replaces itself and resends after a restart; the reply reader retries
    its fetches and keeps its position, so results published after the broker is back
    are read. A call whose request or result is lost meanwhile raises RequestTimeout at
    its deadline; none waits longer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from mulambda.errors import ConfigurationError, RequestTimeout
from mulambda.kafka import KafkaConfig, Producer, await_delivery
from mulambda.kafka.reply import request_headers
from mulambda.routing.correlation import RequesterStats
from mulambda.routing.requester import Requester, RequesterClosed
from mulambda.routing.results import (
    SEEN_MEMORY,
    Fate,
    ResultSieve,
    SeenIds,
    raise_for_result,
    request_body,
    seconds_until,
)
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.runtime.settings import Settings
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.codec import ReplyAddress
from mulambda.wire.events import (
    InferenceRequest,
    InferenceResult,
    Slo,
    SoftWeights,
    Traits,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 30.0
"""How long a request may take when a call names no deadline."""
RESULTS_BUFFER = 10_000
"""Results kept for :meth:`Client.results` until read; the oldest are dropped beyond."""

Deadline = float | timedelta | datetime
"""Seconds from now, a duration, or an aware point in time."""
Verb = Literal["predict", "classify", "regress"]


class ClientClosed(RequesterClosed):
    """The client stopped (or its reply reader failed) while a call was waiting."""


@dataclass(slots=True)
class ClientStats:
    """What the client did besides the requester's counts (``Client.requester_stats``)."""

    submitted: int = 0
    """Requests published with :meth:`Client.submit`."""
    duplicates: int = 0
    """Result copies dropped because their request id was already returned or yielded."""
    late: int = 0
    """Results dropped because their ``infer`` call had raised RequestTimeout."""
    unclaimed: int = 0
    """Results queued for :meth:`Client.results`."""
    overflowed: int = 0
    """Queued results dropped unread because the buffer was full."""


class Client(Lifecycle):
    """A producer's connection to MuLambda: :meth:`infer`, :meth:`submit`, :meth:`results`.

    Kafka is reached through ``config`` or, without one, the keyword arguments that
    mirror :class:`~mulambda.kafka.KafkaConfig` (security fields included).
    ``client_id`` is also the requests' client id (latencies are measured to it).
    Topics are the catalog's (``catalog``, or the default names with ``topic_prefix``).
    """

    def __init__(
        self,
        config: KafkaConfig | None = None,
        *,
        bootstrap_servers: str = "127.0.0.1:9092",
        client_id: str = "mulambda-client",
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ssl_cafile: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        request_timeout_s: float = 10.0,
        topic_prefix: str = "",
        catalog: Catalog | None = None,
        reply_partition: int | None = None,
        instance_id: str | None = None,
        default_deadline_s: float = DEFAULT_DEADLINE_S,
        seen_memory: int = SEEN_MEMORY,
        results_buffer: int = RESULTS_BUFFER,
    ) -> None:
        if not default_deadline_s > 0:
            raise ConfigurationError(f"default deadline must be positive, got {default_deadline_s}")
        if results_buffer < 1:
            raise ConfigurationError(f"results buffer must be >= 1, got {results_buffer}")
        self.config = config or KafkaConfig(
            bootstrap_servers=bootstrap_servers,
            security_protocol=security_protocol,
            sasl_mechanism=sasl_mechanism,
            sasl_username=sasl_username,
            sasl_password=sasl_password,
            ssl_cafile=ssl_cafile,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            request_timeout_s=request_timeout_s,
            client_id=client_id,
        )
        """How this client reaches Kafka."""
        self.client_id = self.config.client_id
        """The requests' client id."""
        self.catalog = catalog or load_catalog(topic_prefix)
        """The topics requests and results go to."""
        self.default_deadline_s = default_deadline_s
        self.stats = ClientStats()
        """Counts of submissions, duplicates and queued results."""
        self._reply_partition = reply_partition
        self._instance_id = instance_id or f"{self.client_id}-{uuid.uuid4().hex[:12]}"
        self._sieve = ResultSieve(seen_memory)
        self._submitted = SeenIds(seen_memory)
        self._results_buffer = results_buffer
        self._results: asyncio.Queue[InferenceResult | None] | None = None
        self._producer: Producer | None = None
        self._requester: Requester[InferenceRequest, InferenceResult] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, client_id: str, **kwargs: Any) -> Client:
        """A client configured like the workers: Kafka (``KafkaConfig.from_settings``) and
        topic prefix from ``settings``; ``kwargs`` as in the constructor."""
        kwargs.setdefault("topic_prefix", settings.topic_prefix)
        return cls(KafkaConfig.from_settings(settings, client_id), **kwargs)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` was not called since."""
        return self._requester is not None

    @property
    def reply_partition(self) -> int:
        """The inference-results partition this client reads; known once started."""
        return self._started().reply_partition

    @property
    def in_flight(self) -> int:
        """``infer`` calls waiting for their result now."""
        return self._requester.in_flight if self._requester is not None else 0

    @property
    def requester_stats(self) -> RequesterStats:
        """The underlying requester's counts (sent, replied, timeouts, late, foreign)."""
        return self._started().stats

    async def start(self) -> None:
        """Connect and position the reply reader; every request is sent after this.

        Raises KafkaUnavailable when Kafka is unreachable within the config's timeout,
        ConfigurationError when the topics are missing.
        """
        if self._requester is not None:
            return
        self._results = asyncio.Queue()
        producer = Producer(self.config)
        await producer.start()
        requester: Requester[InferenceRequest, InferenceResult] = Requester(
            self.config,
            request_topic=self.catalog.name(Topic.INFERENCE_REQUESTS),
            reply_topic=self.catalog.name(Topic.INFERENCE_RESULTS),
            reply_model=InferenceResult,
            reply_partition=self._reply_partition,
            producer=producer,
            instance_id=self._instance_id,
            unclaimed=self._unclaimed,
        )
        try:
            await requester.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer, self._requester = producer, requester

    async def stop(self) -> None:
        """Fail waiting calls with ClientClosed, end ``results()`` iterators, disconnect;
        idempotent."""
        requester, producer, results = self._requester, self._producer, self._results
        self._requester, self._producer = None, None
        if requester is None:
            return
        await requester.stop()
        if producer is not None:
            await producer.stop()
        if results is not None:
            results.put_nowait(None)  # wakes the reader of results(); it ends

    def _started(self) -> Requester[InferenceRequest, InferenceResult]:
        if self._requester is None:
            raise ClientClosed("the client is not started")
        return self._requester

    # --- calls -----------------------------------------------------------------------

    async def infer(
        self,
        *,
        traits: Traits | Mapping[str, str],
        weights: SoftWeights | Mapping[str, float] | None = None,
        body: dict[str, Any] | None = None,
        inputs: Any | None = None,
        instances: Any | None = None,
        deadline: Deadline | None = None,
        slo: Slo | Mapping[str, float] | None = None,
        policy: str | None = None,
        verb: Verb = "predict",
        input_size: int | None = None,
    ) -> InferenceResult:
        """Publish one request and return its ok result.

        The TF Serving body is ``body``, or ``{"inputs": inputs}``, or
        ``{"instances": instances}``. ``deadline`` (seconds, a duration or an aware
        time; the client's default when None) bounds the whole call.

        Raises InferenceFailed (reason, ``error_code``, ``result``) for an error result,
        RequestTimeout when no result came by the deadline, ClientClosed when the client
        stops meanwhile, KafkaUnavailable when the request cannot be delivered,
        ConfigurationError for invalid arguments.
        """
        requester = self._started()
        timeout_s = seconds_until(deadline if deadline is not None else self.default_deadline_s)
        request = self._request(
            requester,
            timeout_s,
            traits,
            weights,
            body,
            inputs,
            instances,
            slo,
            policy,
            verb,
            input_size,
        )
        # Before sending: a copy of its result arriving later is then a known duplicate.
        self._sieve.awaiting(request.message_id)
        try:
            result = await requester.request(request, key=self.client_id, timeout_s=timeout_s)
        except RequestTimeout:
            self._sieve.abandoned(request.message_id)
            raise
        except RequesterClosed as exc:
            if isinstance(exc, ClientClosed):
                raise
            raise ClientClosed(exc.reason) from exc
        return raise_for_result(result)

    async def submit(
        self,
        *,
        traits: Traits | Mapping[str, str],
        weights: SoftWeights | Mapping[str, float] | None = None,
        body: dict[str, Any] | None = None,
        inputs: Any | None = None,
        instances: Any | None = None,
        deadline: Deadline | None = None,
        slo: Slo | Mapping[str, float] | None = None,
        policy: str | None = None,
        verb: Verb = "predict",
        input_size: int | None = None,
    ) -> str:
        """Publish one request (arguments as :meth:`infer`) and return its request id
        (the request's ``message_id``, which its result carries as ``request_id``) once
        Kafka acknowledged it. The result goes to this client's reply partition and is
        yielded by :meth:`results`.

        Raises KafkaUnavailable when the request cannot be delivered, ClientClosed when
        not started, ConfigurationError for invalid arguments.
        """
        requester, producer = self._started(), self._producer
        if producer is None:  # set together with the requester; narrowed for mypy
            raise ClientClosed("the client is not started")
        timeout_s = seconds_until(deadline if deadline is not None else self.default_deadline_s)
        request = self._request(
            requester,
            timeout_s,
            traits,
            weights,
            body,
            inputs,
            instances,
            slo,
            policy,
            verb,
            input_size,
        )
        address = ReplyAddress(request.reply_topic, request.reply_partition, request.correlation_id)
        self._submitted.add(request.message_id)
        delivery = await producer.send(
            requester.request_topic, request, key=self.client_id, headers=request_headers(address)
        )
        await await_delivery(delivery, f"request to {requester.request_topic} not delivered")
        self.stats.submitted += 1
        return request.message_id

    async def results(self, *, only_submitted: bool = False) -> AsyncIterator[InferenceResult]:
        """Results that arrive on this client's reply partition and no :meth:`infer` call
        awaits, each request id once, ok and error results alike (check ``status``).

        That is the results of :meth:`submit` and, on a partition shared with other
        clients (``reply_partition`` pinned in several processes, or a hash collision),
        theirs too; ``only_submitted`` keeps those of this client's ``submit`` calls
        (among the last ``seen_memory``). Only results read after ``start()`` are
        yielded. Ends when the client stops. Each result goes to one iterator.
        """
        self._started()
        queue = self._results
        while queue is not None:
            result = await queue.get()
            if result is None:
                queue.put_nowait(None)  # other iterators end too
                return
            if only_submitted and result.request_id not in self._submitted:
                continue
            yield result

    # --- internals -------------------------------------------------------------------

    def _request(
        self,
        requester: Requester[InferenceRequest, InferenceResult],
        timeout_s: float,
        traits: Traits | Mapping[str, str],
        weights: SoftWeights | Mapping[str, float] | None,
        body: dict[str, Any] | None,
        inputs: Any | None,
        instances: Any | None,
        slo: Slo | Mapping[str, float] | None,
        policy: str | None,
        verb: Verb,
        input_size: int | None,
    ) -> InferenceRequest:
        try:
            return InferenceRequest.model_validate(
                {
                    "reply_topic": requester.reply_topic,
                    "reply_partition": requester.reply_partition,
                    "deadline": utcnow() + timedelta(seconds=timeout_s),
                    "client_id": self.client_id,
                    "traits": traits,
                    "weights": weights if weights is not None else SoftWeights(),
                    "slo": slo,
                    "policy": policy,
                    "verb": verb,
                    "body": request_body(body, inputs, instances),
                    "input_size": input_size,
                },
                # Unknown keys in what the application passed are typos here, not the
                # newer fields the wire models ignore for forward compatibility.
                extra="forbid",
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigurationError(f"invalid request: {where}: {first['msg']}") from exc

    def _unclaimed(self, result: InferenceResult) -> None:
        # Runs in the reply reader for every result no infer() call awaits now.
        fate = self._sieve.judge(result)
        if fate is Fate.LATE:
            self.stats.late += 1
            return
        if fate is Fate.DUPLICATE:
            self.stats.duplicates += 1
            return
        queue = self._results
        if queue is None:
            return
        if queue.qsize() >= self._results_buffer:
            queue.get_nowait()
            self.stats.overflowed += 1
        queue.put_nowait(result)
        self.stats.unclaimed += 1


__all__ = [
    "DEFAULT_DEADLINE_S",
    "RESULTS_BUFFER",
    "Client",
    "ClientClosed",
    "ClientStats",
    "Deadline",
]
