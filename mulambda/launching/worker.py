"""The launcher worker: keeps what a backend runs equal to the launch requests on Kafka.

Start-up: the compacted executor-registrations topic is replayed (no group) into a
:class:`~mulambda.launching.desired.LaunchBook`: the complete desired state. One full
reconciliation follows: every launch request is applied, and whatever the launcher owns
for a launch no longer requested (withdrawn while it was down, its tombstone perhaps
compacted away) is deleted. Then the launcher's own consumer group follows the topic from
its committed offsets (from the beginning the first time): a record about a launch
(request, new spec, tombstone) reconciles that launch alone; the group commits the
record only once the action succeeded or the record was dead-lettered. Records from
before the replay's end that a later record of the same key superseded are skipped, so a
restart never briefly reverts a launch. Every ``resync_interval_s`` a full
reconciliation runs again: replicas that died are started again, drift is undone.

Each outcome is a status event on executor-status keyed by the launch id
(``launch_action`` created / updated / unchanged / deleted / failed, ``detail`` the
objects or the reason; the selector knows no executor by that id). A request that cannot
be carried out (invalid spec, a foreign object in the way, refused by the cluster's RBAC)
is reported ``failed`` and dead-lettered with the reason, never retried forever;
transient errors (API server or broker unreachable) are retried, then dead-lettered,
and the next resync tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from mulambda.errors import KafkaUnavailable, LaunchError, MulambdaError, UntrustedRecord
from mulambda.kafka import (
    ConsumerLoop,
    DeadLetterer,
    KafkaConfig,
    Producer,
    Record,
    consumer_problem,
    producer_problem,
    replay,
)
from mulambda.launching.backend import LaunchBackend
from mulambda.launching.desired import LaunchBook
from mulambda.launching.plan import (
    Action,
    DesiredObject,
    ObservedObject,
    Verb,
    describe,
    outcome,
    plan,
)
from mulambda.runtime.lifecycle import Lifecycle, wait_ended
from mulambda.runtime.observability import HealthServer
from mulambda.selection.admission import RegistrationGate
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import ExecutorRegistration, ExecutorStatus, LaunchAction, ModelState

log = logging.getLogger(__name__)

_STATE_OF = {
    LaunchAction.CREATED: ModelState.START,
    LaunchAction.UPDATED: ModelState.START,
    LaunchAction.UNCHANGED: ModelState.START,
    LaunchAction.DELETED: ModelState.END,
    LaunchAction.FAILED: ModelState.UNKNOWN,
}
"""Model state of a launch report: the replicas report their own once they run."""


class Launcher(Lifecycle):
    """Consumes launch requests and makes ``backend`` run them (module docstring)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        catalog: Catalog,
        backend: LaunchBackend,
        *,
        group_id: str = "mulambda-launcher",
        resync_interval_s: float = 30.0,
        health_host: str = "127.0.0.1",
        health_port: int | None = None,
        shutdown_grace_s: float = 10.0,
        registrations: RegistrationGate | None = None,
    ) -> None:
        self._kafka = kafka
        self._catalog = catalog
        self.backend = backend
        self._group_id = group_id
        self._resync_interval_s = resync_interval_s
        self._shutdown_grace_s = shutdown_grace_s
        self.book = LaunchBook()
        """The launch requests in force."""
        # Launch requests are checked like the selector checks registrations: with a
        # registration secret, an unsigned or forged one launches nothing.
        self._gate = registrations or RegistrationGate()
        self._refused: dict[tuple[int, int], UntrustedRecord] = {}
        """Records the replay refused, by (partition, offset): dead-lettered once the
        group reaches them."""
        self._producer = Producer(kafka)
        self._loop: ConsumerLoop | None = None
        self._resync: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._unsettled: set[str] = set()
        """Launch ids whose latest reconciliation failed."""
        self._backend_problem: str | None = None
        """Why the backend could not list its objects last time (None: it could)."""
        self._state = "new"  # new → starting → running → stopping → stopped
        self._ended = asyncio.Event()
        self.registry = CollectorRegistry()
        """Prometheus registry of this worker."""
        self._reports = Counter(
            "mulambda_launcher_reports",
            "Launch outcomes reported, by action",
            ["action"],
            registry=self.registry,
        )
        self._actions = Counter(
            "mulambda_launcher_actions",
            "Objects created, updated and deleted",
            ["verb"],
            registry=self.registry,
        )
        self._health = (
            None
            if health_port is None
            else HealthServer(
                self.registry,
                ready=self.ready,
                not_ready_reason=self.not_ready_reason,
                host=health_host,
                port=health_port,
            )
        )

    # --- lifecycle ------------------------------------------------------------------

    @property
    def health_port(self) -> int | None:
        """Port of /metrics, /healthz and /readyz, once started with one."""
        return None if self._health is None else self._health.port

    def ready(self) -> bool:
        """Started, reconciled once, and able to consume and report."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the launcher cannot follow launch requests now, or None."""
        if self._state != "running" or self._loop is None:
            return self._state
        return (
            producer_problem(self._producer.health)
            or consumer_problem(self._loop.consumer, "registration consumer", needs_assignment=True)
            or self._backend_problem
        )

    async def start(self) -> None:
        """Replay, reconcile everything once, then join the group; returns once following
        (``ready``), or raises (everything started is stopped again)."""
        if self._state != "new":
            return
        self._state = "starting"
        try:
            # Health first: /healthz answers during the replay, /readyz only after it.
            if self._health is not None:
                await self._health.start()
            await self._producer.start()
            await self.backend.start()
            await self._replay()
            await self.reconcile_all(report_unchanged=True)
            topic = self._catalog.name(Topic.EXECUTOR_REGISTRATIONS)
            self._loop = ConsumerLoop(
                self._kafka,
                {topic: ExecutorRegistration},
                self._handle,
                group_id=self._group_id,
                dead_letters=DeadLetterer(
                    self._producer, self._catalog.name(Topic.DEAD_LETTERS), self._group_id
                ),
                auto_offset_reset="earliest",
            )
            await self._loop.start()
            # Ready means following: wait until the group hands over the partition.
            try:
                await self._loop.wait_assigned(timeout_s=max(30.0, self._kafka.request_timeout_s))
            except TimeoutError as exc:
                raise KafkaUnavailable(
                    f"the launcher group {self._group_id} assigned no partition in time"
                ) from exc
        except BaseException:
            await self._close()
            raise
        self._resync = asyncio.create_task(self._resync_loop(), name="launcher-resync")
        self._state = "running"
        log.info(
            "launcher (%s backend) follows %d launch request(s)",
            self.backend.name,
            len(self.book.launches),
        )

    async def stop(self) -> None:
        """Stop following, then stop the backend (the local one ends its replicas)."""
        if self._state in ("stopping", "stopped"):
            return
        await self._close()

    async def _close(self) -> None:
        self._state = "stopping"
        task, self._resync = self._resync, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop, self._loop = self._loop, None
        if loop is not None:
            await loop.stop(grace_s=self._shutdown_grace_s)
        await self.backend.stop()
        await self._producer.stop()
        if self._health is not None:
            await self._health.stop()
        self._state = "stopped"
        self._ended.set()

    async def wait(self) -> None:
        """Return when stopped; raise when following the topic failed for good."""
        loop = self._loop
        await wait_ended(
            self._ended, loop.done if loop is not None else None, "following launch requests"
        )

    # --- desired state --------------------------------------------------------------

    async def _replay(self) -> None:
        topic = self._catalog.name(Topic.EXECUTOR_REGISTRATIONS)

        def apply(record: Record[Any]) -> None:
            try:
                self._gate.admit(record.key, record.raw, record.headers.items(), record.value)
            except UntrustedRecord as exc:
                log.warning("ignoring %s@%d: %s", topic, record.offset, exc.reason)
                self._refused[(record.partition, record.offset)] = exc
                self.book.note(record.partition, record.offset, None)
                return
            self.book.note(record.partition, record.offset, record.key_str)
            if record.key_str is None:
                return
            try:
                self.book.apply(record.key_str, record.value)
            except LaunchError as exc:
                log.warning("ignoring %s@%d: %s", topic, record.offset, exc.reason)

        await replay(
            self._kafka,
            {topic: ExecutorRegistration},
            apply,
            on_invalid=lambda raw, exc: self.book.note(
                raw.partition, raw.offset, None if raw.key is None else raw.key.decode()
            ),
        )

    async def _handle(self, record: Record[Any]) -> None:
        where = (record.partition, record.offset)
        if self.book.replayed(*where):
            refused = self._refused.pop(where, None)
            if refused is not None:
                raise refused  # dead-lettered by the consumer loop
        else:
            self._gate.admit(record.key, record.raw, record.headers.items(), record.value)
        key = record.key_str
        if key is None or self.book.superseded(record.partition, record.offset, key):
            return
        try:
            about_a_launch = self.book.apply(key, record.value)
        except LaunchError as exc:
            await self._report(key, LaunchAction.FAILED, exc.reason)
            raise
        if self.book.replayed(record.partition, record.offset) and key not in self._unsettled:
            return  # the start-up reconciliation carried it out
        # A launch whose last attempt failed is tried again even when this record changes
        # nothing (a retried tombstone finds the launch already out of the book).
        if about_a_launch or key in self._unsettled:
            await self.reconcile(key)

    # --- reconciliation -------------------------------------------------------------

    async def reconcile(self, launch_id: str) -> LaunchAction:
        """Make the backend run what launch ``launch_id`` asks for (nothing, when it was
        withdrawn); report the outcome. Raises what made it fail, after reporting it."""
        async with self._lock:
            launch = self.book.launches.get(launch_id)
            try:
                desired = [] if launch is None else self.backend.render(launch)
                observed = await self.backend.observe()
                result = plan(desired, observed, scope=[launch_id])
                await self._carry_out(result.actions, observed)
                if result.conflicts:
                    names = ", ".join(str(c.ref) for c in result.conflicts)
                    raise LaunchError(
                        f"{names} exists and is not the launcher's (or another launch's):"
                        " left alone"
                    )
            except MulambdaError as exc:
                self._unsettled.add(launch_id)
                await self._report(launch_id, LaunchAction.FAILED, exc.reason)
                raise
            self._unsettled.discard(launch_id)
            existed = any(o.launch_id == launch_id for o in observed)
            action = outcome(result.actions, withdrawn=launch is None, existed=existed)
            await self._report(launch_id, action, describe(result.actions))
            return action

    async def reconcile_all(self, *, report_unchanged: bool = False) -> None:
        """Reconcile every launch, and delete what the launcher owns for none; a launch
        that fails is reported and left as it is, the others go on."""
        async with self._lock:
            desired: list[DesiredObject] = []
            failed: set[str] = set()
            for launch_id, launch in sorted(self.book.launches.items()):
                try:
                    desired += self.backend.render(launch)
                except LaunchError as exc:
                    failed.add(launch_id)
                    await self._report(launch_id, LaunchAction.FAILED, exc.reason)
            try:
                observed = await self.backend.observe()
            except MulambdaError as exc:
                log.error("cannot list what the launcher runs: %s", exc.reason)
                self._backend_problem = f"{self.backend.name} backend: {exc.reason}"
                self._unsettled |= set(self.book.launches)
                return
            self._backend_problem = None
            scope = {o.launch_id for o in observed if o.launch_id} | set(self.book.launches)
            result = plan(desired, observed, scope=scope - failed)
            by_launch: dict[str, list[Action]] = defaultdict(list)
            for action in result.actions:
                by_launch[action.launch_id].append(action)
            for conflict in result.conflicts:
                failed.add(conflict.launch_id)
                await self._report(
                    conflict.launch_id,
                    LaunchAction.FAILED,
                    f"{conflict.ref} exists and is not the launcher's: left alone",
                )
            for launch_id in sorted((set(self.book.launches) | set(by_launch)) - failed):
                actions = by_launch.get(launch_id, [])
                try:
                    await self._carry_out(actions, observed)
                except MulambdaError as exc:
                    failed.add(launch_id)
                    await self._report(launch_id, LaunchAction.FAILED, exc.reason)
                    continue
                self._unsettled.discard(launch_id)
                done = outcome(
                    actions,
                    withdrawn=launch_id not in self.book.launches,
                    existed=any(o.launch_id == launch_id for o in observed),
                )
                if actions or report_unchanged:
                    await self._report(launch_id, done, describe(actions))
            self._unsettled |= failed

    async def _carry_out(self, actions: Iterable[Action], observed: list[ObservedObject]) -> None:
        found = {o.ref: o for o in observed}
        for action in actions:
            if action.verb is Verb.DELETE:
                await self.backend.delete(found[action.ref])
            elif action.desired is not None:
                await self.backend.apply(action.desired)
            self._actions.labels(action.verb.value).inc()
            log.info("%s %s (launch %s)", action.verb.value, action.ref, action.launch_id)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval_s)
            try:
                await self.reconcile_all()
            except Exception:
                log.exception("resync failed")

    async def _report(self, launch_id: str, action: LaunchAction, detail: str) -> None:
        status = ExecutorStatus(
            executor_id=launch_id,
            model_state=_STATE_OF[action],
            launch_action=action,
            detail=f"{self.backend.name}: {detail}"[:2000],
        )
        self._reports.labels(action.value).inc()
        if action is LaunchAction.FAILED:
            log.error("launch %s failed: %s", launch_id, detail)
        try:
            await self._producer.send_and_wait(
                self._catalog.name(Topic.EXECUTOR_STATUS), status, key=launch_id
            )
        except MulambdaError as exc:
            log.warning("report on launch %s not published: %s", launch_id, exc.reason)
