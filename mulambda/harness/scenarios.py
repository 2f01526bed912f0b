"""The fault scenarios of issue 10, and the run that measures one.

A run (:func:`run_scenario`): readers of the reply topic (read_committed and
read_uncommitted) and of the request topic are positioned at the ends; open-loop load
starts; ``fault_at_s`` into it the fault is injected (and, for a fault with a second
step, such as the restart of a killed broker, that step ``then_after_s`` later, under
the same load); once the load is sent, the run
waits until every request has a result in every reader (plus ``settle_s`` for late
duplicates), or until the last deadline plus the margin. The :class:`Ledger` then does
the accounting; the peak VmRSS of every router is sampled from /proc all along.

Between runs :func:`ensure_serving` puts the platform back (dead workers restarted,
executors at normal speed) and proves it serves with a short probe load that must be
answered ok, once each; it escalates to restarting every worker, then the
infrastructure too. A failing scenario is thus the platform's failure under that
fault, not the remains of the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mulambda.harness.infra import PlatformError
from mulambda.harness.load import LoadGenerator, LoadSpec
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.readers import TopicReader
from mulambda.harness.verify import COMMITTED, UNCOMMITTED, Figures, Ledger, ScenarioReport
from mulambda.wire.catalog import Topic

FaultAction = Callable[[LocalPlatform], Awaitable[None]]
Condition = Callable[[LocalPlatform, LoadSpec], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Fault:
    """One scenario: what is done to the platform, and when."""

    name: str
    description: str
    inject: FaultAction | None = None
    """Done ``fault_at_s`` into the load; recovery is measured from its end."""
    then: FaultAction | None = None
    """Done ``then_after_s`` after ``inject`` ended, under the same load (the restart of
    what it killed); the load goes on ``load_after_fault_s`` after this one ends."""
    then_after_s: float = 0.0
    condition: Condition | None = None
    """Set up before the load and kept for the whole run (no fault instant)."""
    outage_grace_s: float | None = None
    """For a fault that cuts every path to clients (the only broker): requests due
    during it count as answered when answered this long after it ended."""


def slow_delay_ms(spec: PlatformSpec, load: LoadSpec, factor: float = 10.0) -> float:
    """Per-call executor delay at which the platform serves ``factor`` times too slowly.

    The routers hold at most ``routers * router_concurrency`` executor calls open; calls
    taking S seconds complete ``routers * concurrency / S`` per second. Setting that to
    ``rate / factor`` gives ``S = factor * routers * concurrency / rate``.
    """
    return 1000.0 * factor * spec.routers * spec.router_concurrency / load.rate


async def _kill_router(platform: LocalPlatform) -> None:
    await platform.kill("router-0")


ZOMBIE_MOVE_TIMEOUT_S = 60.0
"""How long the ``router-zombie`` scenario waits for the frozen router's partitions to
move (its session timeout, then a rebalance) before it gives up."""


async def _zombie_router(platform: LocalPlatform) -> None:
    # Frozen with whatever it holds (answers, an open transaction), it misses its session
    # timeout; once the other router owns its partitions it is let go on as a zombie.
    await platform.pause("router-0")
    try:
        await platform.wait_partitions_moved("router-0", timeout_s=ZOMBIE_MOVE_TIMEOUT_S)
    finally:
        await platform.resume("router-0")


async def _kill_selector(platform: LocalPlatform) -> None:
    await platform.kill("selector-0")


async def _kill_executor(platform: LocalPlatform) -> None:
    # The busiest one: the policy may send nothing at all to a given process.
    await platform.kill(await platform.busiest_executor())


async def _restart_kafka(platform: LocalPlatform) -> None:
    await platform.restart_infra("kafka")


BROKER_OUTAGE_S = 60.0
"""How long the ``broker-outage`` scenario keeps the only broker stopped."""


async def _kafka_outage(platform: LocalPlatform) -> None:
    await platform.outage("kafka", BROKER_OUTAGE_S)


async def _kill_busiest_broker(platform: LocalPlatform) -> None:
    # The node leading the most partitions: its failover moves the most leaderships (and
    # maybe the coordinators of the routers' group and transactions).
    await platform.kill_infra(await platform.busiest_broker())


async def _restart_killed_brokers(platform: LocalPlatform) -> None:
    await platform.start_killed_infra()


BROKER_FAILOVER_RESTART_AFTER_S = 8.0
"""How long the ``broker-failover`` scenario leaves the killed node down, under load."""


async def _wipe_redis(platform: LocalPlatform) -> None:
    await platform.restart_infra("redis", wipe=True)


async def _slow_executors(platform: LocalPlatform, load: LoadSpec) -> None:
    await platform.set_executor_delay(slow_delay_ms(platform.spec, load))


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("baseline", "no fault: every request must be answered once"),
        Fault("router-kill", "kill -9 of router-0 (of 2)", inject=_kill_router),
        Fault(
            "router-zombie",
            "SIGSTOP of router-0 (of 2) past its session timeout, SIGCONT once the other "
            "router owns its partitions: the zombie must commit nothing",
            inject=_zombie_router,
        ),
        Fault("selector-kill", "kill -9 of selector-0 (of 2)", inject=_kill_selector),
        Fault(
            "executor-kill",
            "kill -9 of the executor process that served the most requests in the second "
            "before (its companions live on; two other processes serve the same models)",
            inject=_kill_executor,
        ),
        Fault(
            "broker-restart",
            "infra.sh restart kafka",
            inject=_restart_kafka,
            outage_grace_s=10.0,  # the recovery target after a broker restart
        ),
        Fault(
            "broker-outage",
            f"infra.sh stop kafka, {BROKER_OUTAGE_S:g} s without a broker, infra.sh start kafka",
            inject=_kafka_outage,
            outage_grace_s=10.0,
        ),
        Fault("redis-wipe", "Redis stopped, its data deleted, started", inject=_wipe_redis),
        Fault(
            "slow-executors",
            "every executor call delayed so the platform serves a tenth of the load",
            condition=_slow_executors,
        ),
        Fault(
            "broker-failover",
            "kill -9 of the Kafka node (of 3) leading the most partitions, restarted "
            f"{BROKER_FAILOVER_RESTART_AFTER_S:g} s later",
            inject=_kill_busiest_broker,
            then=_restart_killed_brokers,
            then_after_s=BROKER_FAILOVER_RESTART_AFTER_S,
        ),
    )
}
"""Every scenario, by name, in the order the suite runs them (``broker-failover`` needs
the three-node platform of tests/faults/test_failover.py)."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Timing of one run."""

    fault_at_s: float = 6.0
    """Seconds into the load at which the fault is injected."""
    margin_s: float = 3.0
    """A result later than its request's deadline plus this leaves the request lost."""
    load_after_fault_s: float | None = 15.0
    """Keep the load going this long after the fault is done, then stop it (the load's
    duration stays an upper bound); None sends the whole duration."""
    settle_s: float = 2.0
    """Once everything is answered, how long to keep reading for late duplicates."""
    premature_left_s: float = 5.0
    """An error result with at least this much deadline left counts as premature."""
    rss_every_s: float = 0.5
    """Router RSS sampling interval."""


class RssPeaks:
    """Samples the VmRSS of some workers and keeps each one's peak."""

    def __init__(self, platform: LocalPlatform, names: list[str]) -> None:
        self._platform = platform
        self._names = names
        self.peaks: dict[str, float] = {}

    def sample(self) -> None:
        """One sample of every worker that runs."""
        for name in self._names:
            rss = self._platform.rss_mb(name)
            if rss is not None:
                self.peaks[name] = max(rss, self.peaks.get(name, 0.0))

    async def run(self, every_s: float, stop: asyncio.Event) -> None:
        """Sample every ``every_s`` until ``stop`` is set."""
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


async def run_scenario(
    platform: LocalPlatform,
    fault: Fault,
    load: LoadSpec,
    options: RunOptions | None = None,
    *,
    notes: tuple[str, ...] = (),
) -> ScenarioReport:
    """Load the platform, inject ``fault``, account for every request (module docstring)."""
    options = options or RunOptions()
    clock = time.monotonic
    catalog = platform.catalog
    ledger = Ledger()
    sent_all = asyncio.Event()
    answered_all = asyncio.Event()

    def on_result(reader: str) -> Callable[[Mapping[str, Any], float], None]:
        def record(payload: Mapping[str, Any], received_s: float) -> None:
            ledger.record_result(reader, payload, received_s)
            if sent_all.is_set() and ledger.unanswered() == 0:
                answered_all.set()

        return record

    if fault.condition is not None:
        await fault.condition(platform, load)
    bootstrap = platform.bootstrap_servers
    results = catalog.name(Topic.INFERENCE_RESULTS)
    readers = [
        TopicReader(
            bootstrap,
            results,
            on_result(COMMITTED),
            isolation_level="read_committed",
            clock=clock,
        ),
        TopicReader(
            bootstrap,
            results,
            on_result(UNCOMMITTED),
            isolation_level="read_uncommitted",
            clock=clock,
        ),
        TopicReader(
            bootstrap,
            catalog.name(Topic.INFERENCE_REQUESTS),
            lambda payload, _t: ledger.record_request_copy(payload),
            clock=clock,
        ),
    ]
    generator = LoadGenerator(
        bootstrap,
        load,
        request_topic=catalog.name(Topic.INFERENCE_REQUESTS),
        reply_topic=results,
        partitions=catalog.spec(Topic.INFERENCE_REQUESTS).partitions,
        on_sent=ledger.record_sent,
        clock=clock,
    )
    rss = RssPeaks(platform, [w.name for w in platform.of_kind("router")])
    stop_sampling = asyncio.Event()
    fault_at: float | None = None
    fault_done: float | None = None
    async with contextlib.AsyncExitStack() as stack:
        for reader in readers:
            await stack.enter_async_context(reader)
        await stack.enter_async_context(generator)
        sampler = asyncio.create_task(rss.run(options.rss_every_s, stop_sampling))
        stop_sending = asyncio.Event()
        sending = asyncio.create_task(generator.run(stop_sending))
        try:
            if fault.inject is not None:
                await asyncio.wait({sending}, timeout=options.fault_at_s)
                fault_at = clock()
                await fault.inject(platform)
                fault_done = clock()
                if fault.then is not None:
                    await asyncio.wait({sending}, timeout=fault.then_after_s)
                    await fault.then(platform)
                if options.load_after_fault_s is not None:
                    await asyncio.wait({sending}, timeout=options.load_after_fault_s)
                    stop_sending.set()
            summary = await sending
            last = summary.last_scheduled_s + load.deadline_s + options.margin_s
            sent_all.set()
            if ledger.unanswered() == 0:
                answered_all.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered_all.wait(), max(0.0, last - clock()))
            if answered_all.is_set():
                await asyncio.sleep(min(options.settle_s, max(0.0, last - clock())))
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
            stop_sampling.set()
            await sampler
    figures = ledger.figures(
        margin_s=options.margin_s,
        fault_at_s=fault_at,
        fault_done_s=fault_done,
        premature_left_s=options.premature_left_s,
        outage_grace_s=fault.outage_grace_s,
    )
    harness = [
        f"{r.isolation_level} reader on {r.topic}: {r.fetch_errors} fetch retries"
        for r in readers
        if r.fetch_errors
    ]
    return ScenarioReport(
        scenario=fault.name,
        description=fault.description,
        rate=load.rate,
        duration_s=round(summary.last_scheduled_s - summary.started_s, 1),
        deadline_s=load.deadline_s,
        figures=figures,
        router_rss_peak_mb={k: round(v, 1) for k, v in rss.peaks.items()},
        notes=(*notes, *harness),
    )


# --- healing --------------------------------------------------------------------------

PROBE_LOAD = LoadSpec(rate=40.0, duration_s=1.0, arrivals="fixed", deadline_s=5.0)
"""The short load that proves a platform serves: 40 requests in one second."""


def serves(figures: Figures) -> bool:
    """Every request of a probe answered ok, exactly once."""
    return (
        figures.sent > 0
        and figures.send_failed == 0
        and figures.ok == figures.sent
        and figures.duplicate_ids[COMMITTED] == 0
    )


async def probe(platform: LocalPlatform, load: LoadSpec = PROBE_LOAD) -> Figures:
    """Run the probe load without a fault; its figures."""
    options = RunOptions(margin_s=1.0, settle_s=0.5)
    report = await run_scenario(platform, FAULTS["baseline"], load, options)
    return report.figures


async def ensure_serving(platform: LocalPlatform, probes: int = 3) -> list[str]:
    """Heal the platform until a probe load is served; what it took, one line each.

    Escalates: heal (restart what is dead, executors to normal speed), then restart every
    worker, then restart the infrastructure and every worker. Each level gets ``probes``
    probe loads. PlatformError when even the last level does not serve.
    """
    notes: list[str] = []

    async def heal() -> None:
        notes.extend(await platform.heal())

    async def restart_workers() -> None:
        notes.append("restarted every worker")
        await platform.restart_all_workers()

    async def restart_everything() -> None:
        notes.append("restarted the infrastructure and every worker")
        await platform.stop_workers(list(platform.workers.values()))
        for component in platform.spec.infra:
            await platform.restart_infra(component)
        await platform.start_workers()

    last: Figures | None = None
    for level in (heal, restart_workers, restart_everything):
        await level()
        for _ in range(probes):
            last = await probe(platform)
            if serves(last):
                return notes
        notes.append(f"probe: {last.ok if last else 0}/{last.sent if last else 0} ok")
    raise PlatformError(
        "the platform does not serve a probe load after a full restart: " + "; ".join(notes)
    )
