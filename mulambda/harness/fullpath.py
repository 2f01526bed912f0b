"""The whole request path under open-loop load: a sweep of offered rates to saturation.

:class:`FullPathSweep` drives a started :class:`~mulambda.harness.platform.LocalPlatform`
(its own Kafka and Redis, routers, selectors, synthetic executors) with the fault
suite's load generator (:class:`~mulambda.harness.load.LoadGenerator`: Poisson arrivals
fixed in advance, hand-written JSON requests) and reads every result on the
inference-results topic (``read_committed`` in the exactly-once delivery mode, what an
SDK sees). For each offered rate it runs, in order:

1. a **direct** phase (unless turned off): the same open-loop schedule of TF Serving
   ``predict`` calls straight to one executor over HTTP, the baseline the path is
   compared with;
2. the **platform** phase: requests through router → selection → executor → result,
   then up to ``drain_s`` for the last results.

Each phase's figures come from a :class:`~mulambda.harness.tally.Tally` (latency from the
scheduled send time in HDR histograms, routing overhead, throughput, errors), plus the
routers' consumer lag on the request topic (sampled twice a second) and the CPU seconds
each process spent per answered request (:mod:`mulambda.harness.proc`: routers,
selectors, executors, companions, broker, Redis and this process, the load generator).
A warm-up phase, not reported, precedes the sweep. The sweep stops after the first rate
the platform did not sustain (throughput below ``saturation_throughput`` of the offered
rate, or p99 above ``saturation_p99_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import aiohttp

from mulambda.errors import MulambdaError
from mulambda.harness.load import LoadGenerator, LoadSpec, arrival_offsets
from mulambda.harness.platform import LocalPlatform
from mulambda.harness.proc import cpu_seconds
from mulambda.harness.readers import TopicReader
from mulambda.harness.requests_log import count_requests, per_second
from mulambda.harness.tally import Tally
from mulambda.kafka import (
    Admin,
    KafkaConsumer,
    close_consumer,
    end_offsets,
    partitions_of,
    start_consumer,
)
from mulambda.wire.catalog import Topic

log = logging.getLogger(__name__)

ROUTER_GROUP = "mulambda-router"
"""The routers' consumer group (``mulambda router --group-id`` default)."""

Progress = Callable[[str, float, Tally], None]
"""Called about twice a second with the phase's name, the fraction of its schedule
that is due, and its tally."""


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """Rates, durations and when to call the platform saturated."""

    rates: tuple[float, ...] = (100.0, 300.0, 600.0, 1000.0, 1500.0, 2000.0)
    """Offered rates in requests/s, in the order they are run."""
    duration_s: float = 10.0
    """Seconds of sending per rate (direct and platform phases alike)."""
    warmup_s: float = 3.0
    warmup_rate: float = 100.0
    drain_s: float = 10.0
    """Longest wait after sending for the last results."""
    deadline_s: float = 10.0
    """Deadline of each request, from its scheduled time."""
    direct: bool = True
    """Measure direct executor calls at every rate."""
    direct_model: str = "MidOK"
    saturation_throughput: float = 0.9
    saturation_p99_ms: float = 1000.0
    stop_at_saturation: bool = True
    seed: int = 1
    body: Mapping[str, Any] | None = None
    """TF Serving body of every request (default ``{"instances": [0, 1]}``)."""


class FullPathSweep:
    """Runs a :class:`SweepSpec` against a started platform (module docstring)."""

    def __init__(
        self,
        platform: LocalPlatform,
        spec: SweepSpec,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.platform = platform
        self.spec = spec
        self._progress = progress
        self._catalog = platform.catalog
        self._tally = Tally()
        self._exactly_once = platform.spec.delivery_mode == "exactly-once"

    def _body(self) -> dict[str, Any]:
        return dict(self.spec.body) if self.spec.body is not None else {"instances": [0, 1]}

    def pids(self) -> dict[str, list[int]]:
        """Process ids by role: every platform worker kind, broker, redis, loadgen."""
        roles: dict[str, list[int]] = {}
        for worker in self.platform.workers.values():
            if worker.pid is not None:
                roles.setdefault(worker.kind, []).append(worker.pid)
        home = self.platform.infra.require_home() if self.platform.infra else None
        for component, role in (("kafka", "broker"), ("redis", "redis")):
            if home is None:
                continue
            with contextlib.suppress(OSError, ValueError):
                roles[role] = [int((home / component / f"{component}.pid").read_text())]
        roles["loadgen"] = [os.getpid()]
        return roles

    def _cpu(self, roles: Mapping[str, list[int]]) -> dict[str, float]:
        return {role: sum(cpu_seconds(pid) or 0.0 for pid in pids) for role, pids in roles.items()}

    async def run(self) -> dict[str, Any]:
        """Warm up, sweep, return the figures (JSON-ready)."""
        spec = self.spec
        results_topic = self._catalog.name(Topic.INFERENCE_RESULTS)
        reader = TopicReader(
            self.platform.bootstrap_servers,
            results_topic,
            lambda payload, at: self._tally.record_result(payload, at),
            isolation_level="read_committed" if self._exactly_once else "read_uncommitted",
        )
        admin = Admin(self.platform.kafka("mulambda-bench-lag"))
        ends = await start_consumer(self.platform.kafka("mulambda-bench-ends"), "end offsets")
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=spec.deadline_s),
        )
        direct: list[dict[str, Any]] = []
        platform: list[dict[str, Any]] = []
        try:
            await admin.start()
            async with reader:
                if spec.warmup_s > 0:
                    if spec.direct:
                        await self._direct(session, spec.warmup_rate, spec.warmup_s, "warm-up")
                    await self._platform(admin, ends, spec.warmup_rate, spec.warmup_s, "warm-up")
                for rate in spec.rates:
                    if spec.direct:
                        direct.append(await self._direct(session, rate, spec.duration_s))
                    point = await self._platform(admin, ends, rate, spec.duration_s)
                    platform.append(point)
                    if spec.stop_at_saturation and point["saturated"]:
                        break
        finally:
            await session.close()
            await admin.stop()
            await close_consumer(ends)
        return {
            "sweep": {**asdict(self.spec), "body": self._body()},
            "platform_spec": {
                k: v for k, v in asdict(self.platform.spec).items() if k != "extra_env"
            },
            "extra_env": dict(self.platform.spec.extra_env),
            "direct": direct,
            "platform": platform,
        }

    # --- phases ------------------------------------------------------------------------

    def _saturated(self, rate: float, figures: Mapping[str, Any]) -> bool:
        p99 = figures["latency_ms"]["p99"]
        return bool(
            figures["throughput_per_s"] < self.spec.saturation_throughput * rate
            or p99 is None
            or p99 > self.spec.saturation_p99_ms
            or figures["errors"]
            or figures["unanswered"]
        )

    async def _watch(self, phase: str, tally: Tally, started: float, duration_s: float) -> None:
        if self._progress is None:
            return
        while True:
            done = min(1.0, (time.monotonic() - started) / duration_s)
            self._progress(phase, done, tally)
            await asyncio.sleep(0.5)

    async def _platform(
        self,
        admin: Admin,
        ends: KafkaConsumer,
        rate: float,
        duration_s: float,
        phase: str | None = None,
    ) -> dict[str, Any]:
        spec = self.spec
        tally = self._tally = Tally()
        name = phase or f"platform {rate:g}/s"
        requests_topic = self._catalog.name(Topic.INFERENCE_REQUESTS)
        generator = LoadGenerator(
            self.platform.bootstrap_servers,
            LoadSpec(
                rate=rate,
                duration_s=duration_s,
                deadline_s=spec.deadline_s,
                seed=spec.seed,
                body=self._body(),
            ),
            request_topic=requests_topic,
            reply_topic=self._catalog.name(Topic.INFERENCE_RESULTS),
            partitions=self._catalog.spec(Topic.INFERENCE_REQUESTS).partitions,
            on_sent=tally.record_sent,
        )
        partitions = await partitions_of(self.platform.kafka(), requests_topic)
        roles = self.pids()
        async with generator:
            before, clock = self._cpu(roles), time.monotonic()
            started_at = datetime.now()  # local: the broker logs local time
            watch = asyncio.create_task(self._watch(name, tally, clock, duration_s))
            lag = asyncio.create_task(self._sample_lag(admin, ends, partitions, tally))
            try:
                await generator.run()
                deadline = time.monotonic() + spec.drain_s
                # Polled: the tally is pure and signals nothing.
                while tally.outstanding > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            finally:
                await _cancel(watch, lag)
            after = self._cpu(roles)
            ended_at = datetime.now()
        figures = _phase_figures(tally, rate, duration_s, before, after)
        requests = self._kafka_requests(started_at, ended_at)
        if requests is not None:
            figures["kafka_requests_per_s"] = requests
        figures["saturated"] = self._saturated(rate, figures)
        return figures

    def _kafka_requests(self, start: datetime, end: datetime) -> dict[str, dict[str, float]] | None:
        """Requests per second to the broker per client id and API over the phase, when
        the broker logs them (``PlatformSpec.kafka_request_log``)."""
        infra = self.platform.infra
        if infra is None or not self.platform.spec.kafka_request_log:
            return None
        try:
            with infra.request_log.open(encoding="utf-8", errors="replace") as lines:
                counts = count_requests(lines, start, end)
        except OSError as exc:
            log.warning("request log not read: %s", exc)
            return None
        return per_second(counts, (end - start).total_seconds())

    async def _sample_lag(
        self, admin: Admin, ends: KafkaConsumer, partitions: list[Any], tally: Tally
    ) -> None:
        while True:
            try:
                committed = await admin.committed(ROUTER_GROUP)
                last = await end_offsets(ends, partitions)
            except MulambdaError as exc:
                log.info("consumer lag not sampled: %s", exc.reason)
            else:
                tally.lag_samples.append(
                    sum(max(0, end - committed.get(tp, end)) for tp, end in last.items())
                )
            await asyncio.sleep(0.5)

    async def _direct(
        self, session: aiohttp.ClientSession, rate: float, duration_s: float, phase: str = ""
    ) -> dict[str, Any]:
        spec = self.spec
        tally = Tally()
        name = phase or f"direct {rate:g}/s"
        executor = self.platform.of_kind("executor")[0]
        url = f"http://127.0.0.1:{executor.port}/v1/models/{spec.direct_model}:predict"
        body = self._body()
        offsets = arrival_offsets(LoadSpec(rate=rate, duration_s=duration_s, seed=spec.seed))

        async def call(scheduled: float) -> None:
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    ok, error = response.status == 200, f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            tally.record_direct(scheduled, time.monotonic(), ok, error)

        roles = {k: v for k, v in self.pids().items() if k in ("executor", "loadgen")}
        before, start = self._cpu(roles), time.monotonic()
        watch = asyncio.create_task(self._watch(name, tally, start, duration_s))
        tasks: set[asyncio.Task[None]] = set()
        try:
            for offset in offsets:
                delay = start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(call(start + offset))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(set(tasks), timeout=spec.deadline_s + 5)
        finally:
            await _cancel(watch)
        return _phase_figures(tally, rate, duration_s, before, self._cpu(roles))


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _phase_figures(
    tally: Tally,
    rate: float,
    duration_s: float,
    before: Mapping[str, float],
    after: Mapping[str, float],
) -> dict[str, Any]:
    figures = tally.figures(duration_s)
    figures.update(
        offered_per_s=rate,
        duration_s=duration_s,
        cpu=_cpu_figures(before, after, tally.answered),
    )
    return figures


def _cpu_figures(
    before: Mapping[str, float], after: Mapping[str, float], answered: int
) -> dict[str, Any]:
    """CPU seconds per role over the phase, and milliseconds of it per answered request."""
    used = {role: max(0.0, after.get(role, 0.0) - before.get(role, 0.0)) for role in before}
    per_request = {
        role: round(seconds * 1000 / answered, 4) if answered else None
        for role, seconds in used.items()
    }
    platform = sum(s for role, s in used.items() if role != "loadgen")
    return {
        "seconds": {role: round(s, 3) for role, s in used.items()},
        "ms_per_request": per_request,
        "platform_ms_per_request": round(platform * 1000 / answered, 4) if answered else None,
    }


SMOKE = SweepSpec(
    rates=(20.0, 40.0),
    duration_s=1.0,
    warmup_s=0.5,
    warmup_rate=20.0,
    drain_s=10.0,
    stop_at_saturation=False,
)
"""A sweep of a few seconds: CI runs it (tests/integration/harness) to keep the harness working."""
