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

Each concern has its module: registrations on Kafka (:mod:`~mulambda.executors.
registration`), status reading (:mod:`~mulambda.executors.heartbeats`), client probing
(:mod:`~mulambda.executors.client_probes`), counters (:mod:`~mulambda.executors.
companion_stats`); this module runs them from start to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from prometheus_client import CollectorRegistry

from mulambda.errors import ConfigurationError, MulambdaError
from mulambda.executors.client_probes import ClientProber
from mulambda.executors.companion_stats import CompanionStats, StatsCollector
from mulambda.executors.heartbeats import StatusReader
from mulambda.executors.oip import OIPClient
from mulambda.executors.registration import (
    deregister_executor,
    read_executors,
    register_executor,
)
from mulambda.executors.tfserving import TFServingClient
from mulambda.kafka import KafkaConfig, Producer
from mulambda.protocols.tfserving import model_path
from mulambda.runtime.lifecycle import Lifecycle, wait_ended
from mulambda.runtime.observability import HealthServer
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorProtocol,
    ExecutorRegistration,
    ExecutorStatus,
    ModelState,
)

__all__ = ["Companion"]

log = logging.getLogger(__name__)


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
        self.registry.register(StatsCollector(executor_id, self.stats))
        self._health = (
            None
            if health_port is None
            else HealthServer(self.registry, ready=self.ready, host=health_host, port=health_port)
        )
        self._producer = Producer(kafka)
        self._status = StatusReader(executor_id, tfserving, self.stats)
        self._prober = ClientProber(
            kafka,
            catalog,
            executor_id,
            self._producer,
            self.stats,
            concurrency=probe_concurrency,
            timeout_s=probe_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._started_tfs = False
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = False
        self._state = "new"  # new → starting → running → stopping → stopped
        self._ended = asyncio.Event()
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
        return dict(self._prober.clients)

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
        await self._prober.replay()
        status = await self.read_status()
        if self._own_registration:
            await register_executor(
                self._producer, self._catalog, self.registration, signing_key=self._signing_key
            )
            log.info("registered executor %s", self.executor_id)
        self._registered = True
        await self._publish_status(status)
        await self._prober.follow()
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
        await self._prober.stop()
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
            self._prober.loop.done if self._prober.loop is not None else None,
            f"following {self._catalog.name(Topic.CLIENT_REGISTRATIONS)}",
        )

    # --- status --------------------------------------------------------------------

    async def read_status(self) -> ExecutorStatus:
        """Read the executor's model status (and the load, where offered) into a status.

        Never raises for a broken endpoint: that is what UNKNOWN and ``detail`` are for.
        """
        return await self._status.read(
            self.registration,
            self._session,
            timeout_s=self._status_timeout_s(),
            heartbeat_interval_s=self.heartbeat_interval_s,
        )

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

    async def probe_round(self) -> None:
        """Probe every known client once and publish what answered."""
        await self._prober.probe_round(self._session)

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.probe_round()
            except Exception:
                log.exception("probe round of %s failed", self.executor_id)
            await asyncio.sleep(max(0.0, started + self.probe_interval_s - loop.time()))
