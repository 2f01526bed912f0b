"""The companion: the sidecar beside each TF Serving instance that speaks Kafka for it.

What it does, from ``start`` to ``stop``:

1. **Registers** the executor: publishes its :class:`ExecutorRegistration` (key: executor
   id), or, given none, confirms that an administrator published one by replaying the
   compacted executor-registrations topic (a clear :class:`ConfigurationError` if the id
   is absent or tombstoned). The first status follows the registration at once, so the
   selector learns the real model state within milliseconds.
2. **Heartbeats** every ``heartbeat_interval_s``: an :class:`ExecutorStatus` whose
   ``model_state`` comes from TF Serving's status endpoint (AVAILABLE if any version is
   AVAILABLE; UNKNOWN with ``detail`` when the endpoint is down or answers garbage), or,
   for an ``oip-v2`` executor, from the Open Inference Protocol's server and model ready
   endpoints (:meth:`mulambda.executors.oip.OIPClient.status`).
   ``in_flight`` and ``errors`` come from ``GET {endpoint}/mulambda/stats`` when the
   executor offers it (MuLambda's own :mod:`mulambda.emulator.server` does). Real TF Serving
   exposes no in-flight count over REST, so against it ``in_flight`` is 0 and ``errors``
   counts only the status reads that failed since the previous heartbeat; the selector's
   load estimate then rests on the routers' own outstanding counts.
3. **Probes** every registered client's probe URL (the set is replayed at start, then
   followed; tombstones remove clients) and publishes a ``probe``
   :class:`LatencyMeasurement` per answer. Probes run in their own task, at most
   ``probe_concurrency`` at a time, each bounded by ``probe_timeout_s``, so a thousand
   clients or a URL that never answers cannot delay a heartbeat. A failed probe publishes
   nothing for that client; it is logged at debug level and counted in :attr:`stats`.
4. **Deregisters** on ``stop``: a final status with state END and a tombstone for the
   executor id on executor-registrations, flushed before the producer closes. A
   registration an administrator owns (``registration=None``) is kept by default, since
   the companion's next start must find it again; END and staleness retire it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mulambda.errors import ConfigurationError, ExecutorError, MulambdaError, RequestTimeout
from mulambda.executors.oip import OIPClient
from mulambda.executors.probe import apply_client_record, measure_latency
from mulambda.executors.tfserving import TFServingClient
from mulambda.kafka import (
    ConsumerLoop,
    DeadLetterer,
    KafkaConfig,
    Producer,
    Record,
    TopicPartition,
    await_delivery,
    replay,
)
from mulambda.protocols.tfserving import ModelVersionStatus, decode_json, model_path
from mulambda.runtime.lifecycle import Lifecycle, wait_ended
from mulambda.runtime.observability import HealthServer
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES, encode
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorProtocol,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
)
from mulambda.wire.signatures import sign

__all__ = [
    "STATS_PATH",
    "Companion",
    "CompanionStats",
    "ExecutorLoad",
    "apply_executor_record",
    "deregister_executor",
    "parse_stats",
    "read_executors",
    "register_executor",
    "summarise_model_state",
]

log = logging.getLogger(__name__)

STATS_PATH: Final = "/mulambda/stats"
"""Non-TF-Serving endpoint of MuLambda's executor giving ``in_flight`` and ``errors``."""

_DETAIL_MAX: Final = 2000
_STATS_RECHECK_HEARTBEATS: Final = 12
"""After a 404 on the stats path, ask again only every this many heartbeats."""

# Most "alive" first: the state reported when no version is AVAILABLE.
_STATE_RANK: Final = (
    ModelState.LOADING,
    ModelState.START,
    ModelState.UNLOADING,
    ModelState.END,
    ModelState.UNKNOWN,
)


# --- pure helpers --------------------------------------------------------------------


def summarise_model_state(
    versions: Sequence[ModelVersionStatus],
) -> tuple[ModelState, str | None]:
    """One state for the executor from TF Serving's per-version states, with a detail.

    AVAILABLE if any version is; otherwise the most advanced state among the versions
    (LOADING before START before UNLOADING before END), with a detail naming each version
    and its error; UNKNOWN with a detail when TF Serving lists no version at all.
    """
    if any(v.state is ModelState.AVAILABLE for v in versions):
        return ModelState.AVAILABLE, None
    if not versions:
        return ModelState.UNKNOWN, "TF Serving lists no version of the model"
    state = min((v.state for v in versions), key=_STATE_RANK.index)
    parts = []
    for v in sorted(versions, key=lambda v: v.version, reverse=True):
        error = "" if v.error_code == "OK" else f" ({v.error_code}: {v.error_message})"
        parts.append(f"version {v.version}: {v.state.value}{error}")
    return state, "; ".join(parts)[:_DETAIL_MAX]


def apply_executor_record(executors: dict[str, ExecutorRegistration], record: Record[Any]) -> None:
    """Fold one executor-registrations record into ``executors`` (tombstone removes)."""
    value = record.value
    if isinstance(value, ExecutorRegistration):
        executors[value.executor_id] = value
    elif value is None and record.key_str is not None:
        executors.pop(record.key_str, None)


@dataclass(frozen=True, slots=True)
class ExecutorLoad:
    """What ``/mulambda/stats`` says: requests in flight and errors since it started."""

    in_flight: int
    errors_total: int


def parse_stats(
    document: Any, model_name: str | None = None, model_version: int | None = None
) -> ExecutorLoad | None:
    """Read ``in_flight`` and ``errors`` (a running total) from a stats document.

    ``in_flight`` is the model's own when the document lists ``model_name`` under
    ``models`` (its version ``model_version``, or all its versions when None), else the
    server's: one server may serve several executors' models (``up.sh`` serves three),
    and each executor's load is its model's, not its neighbours'. Returns None for
    anything else, so a foreign server on that path is ignored.
    """
    if not isinstance(document, dict):
        return None
    in_flight = _count(document.get("in_flight"))
    errors = _count(document.get("errors"))
    if in_flight is None or errors is None:
        return None
    own = _model_in_flight(document.get("models"), model_name, model_version)
    return ExecutorLoad(in_flight=in_flight if own is None else own, errors_total=errors)


def _model_in_flight(models: Any, name: str | None, version: int | None) -> int | None:
    """The in-flight count ``models`` (of a stats document) gives one model, or None."""
    if name is None or not isinstance(models, dict):
        return None
    versions = models.get(name)
    if not isinstance(versions, list):
        return None
    total, found = 0, False
    for entry in versions:
        if not isinstance(entry, dict) or (version is not None and entry.get("version") != version):
            continue
        count = _count(entry.get("in_flight"))
        if count is None:
            return None
        total += count
        found = True
    return total if found else None


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


# --- registrations on Kafka ----------------------------------------------------------


async def _publish_registration_record(
    producer: Producer,
    catalog: Catalog,
    executor_id: str,
    value: bytes | None,
    signing_key: bytes | None,
) -> None:
    """One record on executor-registrations, signed when there is a key; await the ack."""
    headers = None
    if signing_key is not None:
        signature = sign(signing_key, executor_id.encode(), value, int(time.time() * 1000))
        headers = [signature.header()]
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    delivery = await producer.send_raw(topic, value, key=executor_id, headers=headers)
    await await_delivery(delivery, f"delivery to {topic} failed")


async def register_executor(
    producer: Producer,
    catalog: Catalog,
    registration: ExecutorRegistration,
    *,
    signing_key: bytes | None = None,
) -> None:
    """Publish ``registration`` (key: executor id), signed with ``signing_key`` if given
    (:mod:`mulambda.wire.signatures`), and wait for the broker's ack."""
    await _publish_registration_record(
        producer, catalog, registration.executor_id, encode(registration), signing_key
    )


async def deregister_executor(
    producer: Producer, catalog: Catalog, executor_id: str, *, signing_key: bytes | None = None
) -> None:
    """Publish a tombstone for ``executor_id`` (signed, given a key) and wait for the ack."""
    if not executor_id:
        raise ConfigurationError("executor id must not be empty")
    await _publish_registration_record(producer, catalog, executor_id, None, signing_key)


async def read_executors(config: KafkaConfig, catalog: Catalog) -> dict[str, ExecutorRegistration]:
    """Every live executor on the compacted executor-registrations topic, by id."""
    executors: dict[str, ExecutorRegistration] = {}
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    await replay(
        config,
        {topic: ExecutorRegistration},
        lambda record: apply_executor_record(executors, record),
        on_invalid=lambda raw, exc: log.warning(
            "skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason
        ),
        max_record_bytes=MAX_STATE_RECORD_BYTES,
    )
    return executors


# --- the companion -------------------------------------------------------------------


@dataclass(slots=True)
class CompanionStats:
    """Counters of one companion (also served on /metrics when a health port is set)."""

    heartbeats: int = 0
    """Statuses published (including the first and the final one)."""
    heartbeat_failures: int = 0
    """Statuses that could not be published (Kafka refused or timed out)."""
    status_errors: int = 0
    """TF Serving status reads that failed (down, timeout, error, garbage)."""
    stats_errors: int = 0
    """``/mulambda/stats`` reads that failed other than by a 404."""
    probe_rounds: int = 0
    """Completed rounds over every known client."""
    probes_ok: int = 0
    """Probes answered (each publishes one latency measurement)."""
    probes_failed: int = 0
    """Probes that failed (connection refused, non-2xx, bad URL)."""
    probes_timed_out: int = 0
    """Probes with no answer within ``probe_timeout_s``."""
    latencies_published: int = 0
    """Latency measurements the broker acknowledged."""
    publish_failures: int = 0
    """Latency measurements the broker did not acknowledge."""
    invalid_client_records: int = 0
    """Undecodable client-registration records skipped."""
    clients: int = 0
    """Clients currently known."""
    last_round_s: float = 0.0
    """Duration of the latest probe round."""


class _StatsCollector:
    """Exposes :class:`CompanionStats` to Prometheus at scrape time (no second copy)."""

    _gauges: Final = frozenset({"clients", "last_round_s"})

    def __init__(self, companion: Companion) -> None:
        self._companion = companion

    def collect(self) -> Iterator[Any]:
        labels = {"executor_id": self._companion.executor_id}
        for name, value in asdict(self._companion.stats).items():
            family: Any
            if name in self._gauges:
                family = GaugeMetricFamily(
                    f"mulambda_companion_{name}", name.replace("_", " "), labels=list(labels)
                )
            else:
                family = CounterMetricFamily(
                    f"mulambda_companion_{name}", name.replace("_", " "), labels=list(labels)
                )
            family.add_metric(list(labels.values()), float(value))
            yield family


def _check_protocol(
    registration: ExecutorRegistration, client: TFServingClient | OIPClient
) -> None:
    """Refuse to watch an executor through a client of another protocol than its own."""
    oip = isinstance(client, OIPClient)
    speaks = ExecutorProtocol.OIP_V2 if oip else ExecutorProtocol.TFSERVING_REST
    if registration.protocol is not speaks:
        raise ConfigurationError(
            f"executor {registration.executor_id} speaks {registration.protocol.value}, but "
            f"the companion watches it as {speaks.value}"
        )


class Companion(Lifecycle):
    """Registers an executor, heartbeats its status, probes clients, deregisters on stop.

    See the module docstring for the behaviour. ``tfserving`` is the client of the TF
    Serving endpoint to watch (it may differ from the registered endpoint, e.g. localhost
    inside a pod); the companion starts it if needed and stops it only if it started it.
    ``heartbeat_interval_s`` None uses the registration's. ``probe_interval_s`` None
    probes once per heartbeat interval. ``deregister_on_stop`` None means: tombstone a
    registration this companion published, keep one an administrator published.
    ``health_port`` not None serves /metrics, /healthz and /readyz there (0: any port).
    ``tfserving`` is an :class:`OIPClient` for an executor whose registration says
    ``oip-v2``; a client of the other protocol is refused. ``signing_key``: the
    executor's key (:func:`mulambda.wire.signatures.executor_key`); given, the
    registration and the tombstone this companion publishes are signed with it.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        catalog: Catalog,
        registration: ExecutorRegistration | None,
        *,
        executor_id: str,
        tfserving: TFServingClient | OIPClient,
        heartbeat_interval_s: float | None = None,
        probe_interval_s: float | None = None,
        probe_concurrency: int = 32,
        probe_timeout_s: float = 2.0,
        status_timeout_s: float | None = None,
        deregister_on_stop: bool | None = None,
        health_host: str = "127.0.0.1",
        health_port: int | None = None,
        shutdown_timeout_s: float = 10.0,
        signing_key: bytes | None = None,
    ) -> None:
        if registration is not None and registration.executor_id != executor_id:
            raise ConfigurationError(
                f"executor id {executor_id!r} differs from the registration's "
                f"{registration.executor_id!r}"
            )
        for name, value in (
            ("heartbeat_interval_s", heartbeat_interval_s),
            ("probe_interval_s", probe_interval_s),
            ("status_timeout_s", status_timeout_s),
            ("probe_timeout_s", probe_timeout_s),
        ):
            if value is not None and not 0 < value <= 3600:
                raise ConfigurationError(f"{name} must be in (0, 3600], not {value!r}")
        if probe_concurrency < 1:
            raise ConfigurationError(f"probe_concurrency must be >= 1, not {probe_concurrency}")
        if registration is not None:
            model_path(registration.model_name, version=registration.model_version)
            _check_protocol(registration, tfserving)
        self.executor_id = executor_id
        self._kafka = kafka
        self._catalog = catalog
        self._own_registration = registration is not None
        self._registration = registration
        self._tfs = tfserving
        self._heartbeat_override = heartbeat_interval_s
        self._probe_interval_override = probe_interval_s
        self._probe_concurrency = probe_concurrency
        self._probe_timeout_s = probe_timeout_s
        self._status_timeout_override = status_timeout_s
        self._deregister_on_stop = (
            self._own_registration if deregister_on_stop is None else deregister_on_stop
        )
        self._shutdown_timeout_s = shutdown_timeout_s
        self._signing_key = signing_key
        self.stats = CompanionStats()
        """Live counters."""
        self.registry = CollectorRegistry()
        """This companion's Prometheus registry."""
        self.registry.register(_StatsCollector(self))
        self._health = (
            None
            if health_port is None
            else HealthServer(self.registry, ready=self.ready, host=health_host, port=health_port)
        )
        self._producer = Producer(kafka)
        self._clients: dict[str, ClientRegistration] = {}
        self._client_ends: dict[TopicPartition, int] = {}
        self._client_loop: ConsumerLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started_tfs = False
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = False
        self._state = "new"  # new → starting → running → stopping → stopped
        self._ended = asyncio.Event()
        self._last_errors_total: int | None = None
        self._stats_offered = True
        self._stats_recheck = 0
        self.last_status: ExecutorStatus | None = None
        """The latest status published."""

    # --- properties ----------------------------------------------------------------

    @property
    def registration(self) -> ExecutorRegistration:
        """The registration in force (published, or confirmed at start)."""
        if self._registration is None:
            raise ConfigurationError("the registration is confirmed only by start()")
        return self._registration

    @property
    def heartbeat_interval_s(self) -> float:
        """Seconds between statuses."""
        return self._heartbeat_override or self.registration.heartbeat_interval_s

    @property
    def probe_interval_s(self) -> float:
        """Seconds between the starts of probe rounds."""
        return self._probe_interval_override or self.heartbeat_interval_s

    @property
    def clients(self) -> dict[str, ClientRegistration]:
        """A copy of the clients known now."""
        return dict(self._clients)

    def ready(self) -> bool:
        """Registered, heartbeating and probing."""
        return self._state == "running"

    @property
    def health_port(self) -> int | None:
        """Port of /metrics, /healthz, /readyz, once started with a health port."""
        return None if self._health is None else self._health.port

    def _status_timeout_s(self) -> float:
        # A status read must never hold a heartbeat back by a whole interval.
        return self._status_timeout_override or min(2.0, 0.5 * self.heartbeat_interval_s)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Register (or confirm), publish the first status, then heartbeat and probe.

        Raises ConfigurationError when confirming a registration that does not exist and
        KafkaUnavailable when the broker cannot be reached; everything opened is closed
        again before raising.
        """
        if self._state != "new":
            return
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            # Retracts the registration too if it was already published.
            await self._close(publish=True)
            raise
        self._state = "running"

    async def _start(self) -> None:
        if not self._tfs.started:
            await self._tfs.start()
            self._started_tfs = True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._probe_concurrency, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        await self._producer.start()
        if self._registration is None:
            await self._confirm_registration()
        await self._replay_clients()
        status = await self.read_status()
        if self._own_registration:
            await register_executor(
                self._producer, self._catalog, self.registration, signing_key=self._signing_key
            )
            log.info("registered executor %s", self.executor_id)
        self._registered = True
        await self._publish_status(status)
        await self._follow_clients()
        if self._health is not None:
            await self._health.start()
            log.info("companion %s serves /metrics on port %d", self.executor_id, self._health.port)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name=f"heartbeats-{self.executor_id}"),
            asyncio.create_task(self._probe_loop(), name=f"probes-{self.executor_id}"),
        ]

    async def _confirm_registration(self) -> None:
        executors = await read_executors(self._kafka, self._catalog)
        found = executors.get(self.executor_id)
        if found is None:
            raise ConfigurationError(
                f"executor {self.executor_id} is not registered on "
                f"{self._catalog.name(Topic.EXECUTOR_REGISTRATIONS)}: register it with "
                "`mulambda executors register`, or give the companion its traits"
            )
        if found.launch is not None:
            raise ConfigurationError(
                f"{self.executor_id} is a launch request, not an executor: `mulambda launcher`"
                " runs its replicas, which register as its id plus -<ordinal>"
            )
        model_path(found.model_name, version=found.model_version)
        _check_protocol(found, self._tfs)
        self._registration = found
        if found.endpoint.rstrip("/") != self._tfs.base_url:
            log.info(
                "executor %s is registered at %s; watching %s",
                self.executor_id,
                found.endpoint,
                self._tfs.base_url,
            )

    async def stop(self) -> None:
        """Stop probing and heartbeating, publish END (and the tombstone), flush, close.

        Idempotent. Publishing is bounded by ``shutdown_timeout_s``; failures are logged,
        never raised, so a process stops even with the broker gone.
        """
        if self._state in ("stopping", "stopped"):
            return
        if self._state == "new":
            self._state = "stopped"
            self._ended.set()
            return
        await self._close(publish=True)

    async def _close(self, *, publish: bool) -> None:
        self._state = "stopping"
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        loop, self._client_loop = self._client_loop, None
        if loop is not None:
            await loop.stop(grace_s=2.0)
        if publish and self._registered and self._producer.started:
            try:
                async with asyncio.timeout(self._shutdown_timeout_s):
                    await self._publish_final()
            except (TimeoutError, MulambdaError) as exc:
                log.error("could not publish the deregistration of %s: %s", self.executor_id, exc)
        await self._producer.stop()
        if self._health is not None:
            await self._health.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._started_tfs:
            self._started_tfs = False
            await self._tfs.stop()
        self._state = "stopped"
        self._ended.set()

    async def _publish_final(self) -> None:
        final = ExecutorStatus(
            executor_id=self.executor_id,
            model_state=ModelState.END,
            detail="companion stopped",
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        await self._producer.send_and_wait(
            self._catalog.name(Topic.EXECUTOR_STATUS), final, key=self.executor_id
        )
        self.stats.heartbeats += 1
        self.last_status = final
        if self._deregister_on_stop:
            await deregister_executor(
                self._producer, self._catalog, self.executor_id, signing_key=self._signing_key
            )
            log.info("deregistered executor %s", self.executor_id)
        await self._producer.flush()

    async def wait(self) -> None:
        """Return when stopped; raise when following the client topic failed for good."""
        await wait_ended(
            self._ended,
            self._client_loop.done if self._client_loop is not None else None,
            f"following {self._catalog.name(Topic.CLIENT_REGISTRATIONS)}",
        )

    # --- status --------------------------------------------------------------------

    async def read_status(self) -> ExecutorStatus:
        """Read TF Serving's model status (and the load, where offered) into a status.

        Never raises for a broken endpoint: that is what UNKNOWN and ``detail`` are for.
        """
        reg = self.registration
        detail: str | None
        # Both reads at once: together they must stay within one status timeout.
        outcome, load = await asyncio.gather(self._read_versions(reg), self._read_load(reg))
        errors = 0
        if isinstance(outcome, MulambdaError):
            self.stats.status_errors += 1
            state, detail = ModelState.UNKNOWN, f"status of {reg.model_name}: {outcome.reason}"
            log.debug("status read failed for %s: %s", self.executor_id, outcome.reason)
            # An HTTP error answer is already in the executor's own error total, when it
            # reports one; a read that got no answer is only ours to count.
            status = outcome.status if isinstance(outcome, ExecutorError) else None
            if load is None or status is None:
                errors += 1
        else:
            state, detail = summarise_model_state(outcome)
        in_flight = 0
        if load is not None:
            previous, self._last_errors_total = self._last_errors_total, load.errors_total
            if previous is not None:
                # A total below the previous one means the executor restarted.
                errors += load.errors_total - (previous if load.errors_total >= previous else 0)
            in_flight = load.in_flight
        return ExecutorStatus(
            executor_id=self.executor_id,
            model_state=state,
            in_flight=in_flight,
            errors=errors,
            detail=detail[:_DETAIL_MAX] if detail else None,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )

    async def _read_versions(
        self, reg: ExecutorRegistration
    ) -> list[ModelVersionStatus] | MulambdaError:
        try:
            return await self._tfs.status(
                reg.model_name, reg.model_version, timeout_s=self._status_timeout_s()
            )
        except MulambdaError as exc:
            return exc

    async def _read_load(self, reg: ExecutorRegistration) -> ExecutorLoad | None:
        """``/mulambda/stats`` of the executor (in flight: ``reg``'s model's), or None
        when it does not offer one."""
        session = self._session
        if session is None:
            return None
        if not self._stats_offered:
            self._stats_recheck -= 1
            if self._stats_recheck > 0:
                return None
        url = self._tfs.base_url + STATS_PATH
        try:
            async with (
                asyncio.timeout(self._status_timeout_s()),
                session.get(url, allow_redirects=False) as response,
            ):
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats.stats_errors += 1
            log.debug("stats read failed for %s: %r", self.executor_id, exc)
            return None
        if status in (404, 405, 501):
            # Real TF Serving: no such path. Ask again now and then (an upgrade may add it).
            self._stats_offered = False
            self._stats_recheck = _STATS_RECHECK_HEARTBEATS
            return None
        try:
            document = decode_json(body) if status == 200 else None
            load = parse_stats(document, reg.model_name, reg.model_version)
        except ValueError:
            load = None
        if load is None:
            self.stats.stats_errors += 1
            return None
        self._stats_offered = True
        return load

    async def _publish_status(self, status: ExecutorStatus) -> None:
        try:
            async with asyncio.timeout(max(self.heartbeat_interval_s, 1.0)):
                await self._producer.send_and_wait(
                    self._catalog.name(Topic.EXECUTOR_STATUS), status, key=self.executor_id
                )
        except (TimeoutError, MulambdaError) as exc:
            self.stats.heartbeat_failures += 1
            log.warning("status of %s not published: %s", self.executor_id, exc)
            return
        self.stats.heartbeats += 1
        self.last_status = status

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.heartbeat_interval_s
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            # A fixed schedule keeps the cadence; after a stall, skip rather than burst.
            next_at = max(next_at + interval, loop.time())
            try:
                await self._publish_status(await self.read_status())
            except Exception:
                log.exception("heartbeat of %s failed", self.executor_id)

    # --- clients and probes --------------------------------------------------------

    async def _replay_clients(self) -> None:
        topic = self._catalog.name(Topic.CLIENT_REGISTRATIONS)

        def invalid(raw: Any, exc: MulambdaError) -> None:
            self.stats.invalid_client_records += 1
            log.warning("skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason)

        self._client_ends = await replay(
            self._kafka,
            {topic: ClientRegistration},
            lambda record: apply_client_record(self._clients, record),
            on_invalid=invalid,
            max_record_bytes=MAX_STATE_RECORD_BYTES,
        )
        self.stats.clients = len(self._clients)

    async def _follow_clients(self) -> None:
        topic = self._catalog.name(Topic.CLIENT_REGISTRATIONS)
        ends = self._client_ends

        async def handle(record: Record[Any]) -> None:
            # The replay already applied everything before these offsets.
            if record.offset < ends.get(TopicPartition(record.topic, record.partition), 0):
                return
            apply_client_record(self._clients, record)
            self.stats.clients = len(self._clients)

        async def invalid(raw: Any, exc: MulambdaError) -> bool:
            # Every companion reads this topic without a group; dead-lettering here would
            # file one letter per companion. The selector's group consumer files the one.
            if raw.offset >= ends.get(TopicPartition(raw.topic, raw.partition), 0):
                self.stats.invalid_client_records += 1
                log.warning("skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason)
            return True

        self._client_loop = ConsumerLoop(
            self._kafka,
            {topic: ClientRegistration},
            handle,
            group_id=None,
            dead_letters=DeadLetterer(self._producer, self._catalog.name(Topic.DEAD_LETTERS), None),
            on_invalid=invalid,
            partitions=sorted(ends, key=lambda tp: tp.partition),
            auto_offset_reset="earliest",
            max_record_bytes=MAX_STATE_RECORD_BYTES,
        )
        await self._client_loop.start()

    async def probe_round(self) -> None:
        """Probe every known client once and publish what answered."""
        session = self._session
        if session is None:
            return
        started = time.monotonic()
        clients = list(self._clients.values())
        limit = asyncio.Semaphore(self._probe_concurrency)
        deliveries: list[asyncio.Future[Any]] = []
        topic = self._catalog.name(Topic.LATENCY_MEASUREMENTS)

        def delivered(future: asyncio.Future[Any]) -> None:
            # Counted as acks arrive, not at the end of a round that may take minutes.
            if future.cancelled() or future.exception() is not None:
                self.stats.publish_failures += 1
                log.warning("latency measurement not delivered: %r", future)
            else:
                self.stats.latencies_published += 1

        async def probe(client: ClientRegistration) -> None:
            async with limit:
                try:
                    latency_ms = await measure_latency(
                        session, client.probe_url, self._probe_timeout_s
                    )
                except RequestTimeout as exc:
                    self.stats.probes_timed_out += 1
                    log.debug("probe of %s timed out: %s", client.client_id, exc.reason)
                    return
                except MulambdaError as exc:
                    self.stats.probes_failed += 1
                    log.debug("probe of %s failed: %s", client.client_id, exc.reason)
                    return
            self.stats.probes_ok += 1
            current = self._clients.get(client.client_id)
            if current is None or current.probe_url != client.probe_url:
                return  # deregistered (or moved) while we measured
            measurement = LatencyMeasurement(
                executor_id=self.executor_id,
                client_id=client.client_id,
                latency_ms=min(latency_ms, 3_600_000.0),
                source=LatencySource.PROBE,
            )
            try:
                delivery = await self._producer.send(topic, measurement, key=self.executor_id)
            except MulambdaError as exc:
                self.stats.publish_failures += 1
                log.warning("latency to %s not published: %s", client.client_id, exc.reason)
                return
            delivery.add_done_callback(delivered)
            deliveries.append(delivery)

        await asyncio.gather(*(probe(c) for c in clients))
        # The round ends when the broker acknowledged (or refused) every measurement.
        await asyncio.gather(*deliveries, return_exceptions=True)
        self.stats.probe_rounds += 1
        self.stats.last_round_s = time.monotonic() - started

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.probe_round()
            except Exception:
                log.exception("probe round of %s failed", self.executor_id)
            await asyncio.sleep(max(0.0, started + self.probe_interval_s - loop.time()))
