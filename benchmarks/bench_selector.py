"""The selector worker end to end over Kafka: latency, throughput, materialisation,
restart and memory.

Run (servers from ``deploy/local/infra.sh start``, or any MULAMBDA_* servers)::

    source .mulambda/env   # or: eval "$(deploy/local/infra.sh start)"
    .venv/bin/python benchmarks/bench_selector.py [--only latency,throughput,...]

Starts nothing but its own selector processes (``python -m mulambda.cli selector``, as
in production, so requesters never share its event loop). Creates topics under a unique
prefix and Redis keys under a unique prefix, and deletes both at the end.

Parts (``--only`` picks some; each prints its figures, the targets in brackets):

``latency``
    ``--executors`` (1,000) executors with the request's traits; one requester offers
    ``--rate`` (500) requests/s, open loop, for ``--duration`` (10) s. Latency counts
    from each request's scheduled time, so a stall is not hidden by the sender waiting.
    [p50 <= 5 ms, p99 <= 20 ms]
``throughput``
    ``--procs`` (2) requester processes, ``--concurrency`` (200) requests in flight each,
    closed loop for ``--duration`` s. Prints replies/s seen by the requesters and
    selections/s counted by the selector, and the selector's CPU use. [>= 5,000/s]
``materialise``
    The selector is paused (SIGSTOP), ``--events`` (100,000) statuses and probe
    latencies are published, the selector resumed (SIGCONT); events/s until its store
    offsets reach the topics' ends. [>= 20,000 events/s]
``restart``
    Fills up to ``--restart-executors`` (10,000) executors in 10 traits keys, stops the
    selector (SIGTERM) and times a new process from spawn to ``/readyz``, and the
    ``start()`` part of it with its phases (from the worker's "selector ready" log
    line). [<= 2 s]
``memory``
    VmRSS of the selector process with ``--restart-executors`` executors. [<= 200 MB]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mulambda.errors import MulambdaError
from mulambda.kafka import Admin, KafkaConfig, Producer, partitions_of, start_consumer
from mulambda.routing.requester import Requester
from mulambda.runtime.settings import Settings
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.codec import encode
from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    ModelState,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    SoftWeights,
    Traits,
    utcnow,
)

PARTS = ("latency", "throughput", "materialise", "restart", "memory")
REQUEST_TRAITS = Traits(model_type="bench-0", input_format="tensor", output_format="probs")
CLIENTS = 10
INTERVAL_S = 600.0  # long heartbeats: nothing expires during a run


def _traits(key: int) -> Traits:
    return Traits(model_type=f"bench-{key}", input_format="tensor", output_format="probs")


def _registration(i: int) -> ExecutorRegistration:
    # The first block of 1,000 has the request's traits; later blocks other keys.
    return ExecutorRegistration(
        executor_id=f"bench-{i:06d}",
        model_name=f"model-{i % 50}",
        model_version=1,
        traits=_traits(i // 1000),
        accuracy=0.5 + (i % 97) / 200,
        endpoint=f"http://10.0.{i // 250 % 256}.{i % 250}:8501",
        model_data_delay_ms_per_element=(i % 13) / 10,
        heartbeat_interval_s=INTERVAL_S,
    )


def _status(i: int, in_flight: int = 0) -> ExecutorStatus:
    return ExecutorStatus(
        executor_id=f"bench-{i:06d}",
        model_state=ModelState.AVAILABLE,
        in_flight=in_flight,
        heartbeat_interval_s=INTERVAL_S,
    )


def _probe(i: int, client: int, ms: float) -> LatencyMeasurement:
    return LatencyMeasurement(
        executor_id=f"bench-{i:06d}", client_id=f"client-{client}", latency_ms=ms
    )


def _request(client: int) -> SelectionRequest:
    # reply_topic and deadline are placeholders: Requester.request sets them.
    return SelectionRequest(
        reply_topic="placeholder",
        deadline=utcnow(),
        client_id=f"client-{client}",
        traits=REQUEST_TRAITS,
        weights=SoftWeights(latency=0.5, accuracy=0.5),
        input_size=10,
    )


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


# --- the selector process ----------------------------------------------------------


@dataclass
class SelectorProcess:
    """One ``mulambda selector`` child with its metrics port and log file."""

    process: asyncio.subprocess.Process
    port: int
    log: Path
    spawned: float

    @property
    def pid(self) -> int:
        return self.process.pid


class Bench:
    """Topics, store prefix, producer and the selector processes of one run."""

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = settings
        uid = uuid.uuid4().hex[:8]
        self.topic_prefix = f"bench-{uid}."
        self.redis_prefix = f"bench-{uid}:"
        self.group = f"bench-selector-{uid}"
        self.catalog: Catalog = load_catalog(self.topic_prefix)
        self.kafka = KafkaConfig.from_settings(settings, "bench")
        self.producer = Producer(self.kafka, linger_ms=5)
        self.registered = 0
        self.selector: SelectorProcess | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-selector-"))
        self.http: aiohttp.ClientSession | None = None

    # --- setup ----------------------------------------------------------------------

    async def __aenter__(self) -> Bench:
        async with Admin(self.kafka) as admin:
            await admin.apply(self.catalog)
        await self.producer.start()
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.selector is not None:
            await self.stop_selector()
        if self.http is not None:
            await self.http.close()
        await self.producer.stop()
        async with Admin(self.kafka) as admin:
            await admin.delete([self.catalog.name(t) for t in Topic])
        store = ViewStore(self.settings.redis_url, key_prefix=self.store_prefix)
        async with store:
            await store.clear()

    @property
    def store_prefix(self) -> str:
        # What `mulambda selector` uses: the Redis prefix, then the topic prefix.
        return f"{self.redis_prefix}{self.topic_prefix}"

    async def publish(self, topic: Topic, messages: Sequence[Any], key: str) -> float:
        """Publish pre-encoded messages as fast as the producer takes them; seconds spent."""
        name = self.catalog.name(topic)
        started = time.perf_counter()
        deliveries = [
            await self.producer.send_raw(name, encode(m), key=getattr(m, key)) for m in messages
        ]
        await asyncio.gather(*deliveries)
        return time.perf_counter() - started

    async def register(self, total: int) -> None:
        """Register executors up to ``total`` with a status and probes from every client."""
        new = range(self.registered, total)
        if not new:
            return
        await self.publish(
            Topic.EXECUTOR_REGISTRATIONS, [_registration(i) for i in new], "executor_id"
        )
        await self.publish(Topic.EXECUTOR_STATUS, [_status(i) for i in new], "executor_id")
        probes = [_probe(i, c, 1.0 + (i * 7 + c * 3) % 200) for i in new for c in range(CLIENTS)]
        await self.publish(Topic.LATENCY_MEASUREMENTS, probes, "executor_id")
        self.registered = total

    async def topic_ends(self) -> dict[tuple[str, int], int]:
        """End offsets of the status and latency partitions.

        Not the compacted topics: the selector replays those at every start and stores
        no offsets for them until a new record arrives.
        """
        consumer = await start_consumer(self.kafka, "bench")
        try:
            tps = await partitions_of(
                self.kafka,
                *(
                    self.catalog.name(t)
                    for t in (Topic.EXECUTOR_STATUS, Topic.LATENCY_MEASUREMENTS)
                ),
            )
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def store_caught_up(self, timeout_s: float = 120.0) -> float:
        """Wait until the selector's stored offsets reach the state topics' ends."""
        ends = await self.topic_ends()
        started = time.perf_counter()
        async with ViewStore(self.settings.redis_url, key_prefix=self.store_prefix) as store:
            while True:
                stored = await store.offsets()
                if all(stored.get(tp, 0) >= end for tp, end in ends.items() if end > 0):
                    return time.perf_counter() - started
                if time.perf_counter() - started > timeout_s:
                    raise MulambdaError(f"store did not catch up within {timeout_s}s")
                await asyncio.sleep(0.01)

    # --- selector process -----------------------------------------------------------

    async def start_selector(self) -> float:
        """Spawn a selector; seconds from spawn until /readyz answers 200."""
        port = _free_port()
        log = self.tmp / f"selector-{port}.log"
        env = {
            **os.environ,
            "MULAMBDA_TOPIC_PREFIX": self.topic_prefix,
            "MULAMBDA_REDIS_KEY_PREFIX": self.redis_prefix,
            "MULAMBDA_METRICS_PORT": str(port),
            "MULAMBDA_SELECTOR_GROUP_ID": self.group,
            "MULAMBDA_LOG_LEVEL": "INFO",
            "MULAMBDA_SHUTDOWN_GRACE_S": "2",
        }
        spawned = time.perf_counter()
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mulambda.cli",
                "selector",
                "--selector-id",
                f"bench-{port}",
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.selector = SelectorProcess(process, port, log, spawned)
        while True:
            if process.returncode is not None:
                raise MulambdaError(f"selector exited ({process.returncode}): {log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self._get("/readyz") as response:
                    if response.status == 200:
                        return time.perf_counter() - spawned
            if time.perf_counter() - spawned > 120:
                raise MulambdaError("selector not ready within 120 s")
            await asyncio.sleep(0.005)

    def _get(self, path: str) -> Any:
        assert self.http is not None
        assert self.selector is not None
        return self.http.get(
            f"http://127.0.0.1:{self.selector.port}{path}", timeout=aiohttp.ClientTimeout(total=5)
        )

    async def stop_selector(self) -> None:
        selector, self.selector = self.selector, None
        if selector is None:
            return
        selector.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(selector.process.wait(), 30)
        except TimeoutError:
            selector.process.kill()
            await selector.process.wait()

    def ready_log(self) -> dict[str, Any]:
        """The selector's own "selector ready" log line (with rebuild_s)."""
        assert self.selector is not None
        for line in self.selector.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("msg") == "selector ready":
                    return dict(entry)
        return {}

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self._get("/metrics") as response:
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def metric_sum(self, name: str) -> float:
        return sum(v for (n, _), v in (await self.metrics()).items() if n == name)

    async def wait_view(self, executors: int, timeout_s: float = 120.0) -> None:
        started = time.perf_counter()
        while await self.metric_sum("mulambda_selector_view_executors") < executors:
            if time.perf_counter() - started > timeout_s:
                raise MulambdaError(f"view did not reach {executors} executors")
            await asyncio.sleep(0.05)

    def requester(self, partition: int) -> Requester[SelectionRequest, SelectionReply]:
        return Requester(
            self.kafka,
            request_topic=self.catalog.name(Topic.SELECTION_REQUESTS),
            reply_topic=self.catalog.name(Topic.SELECTION_REPLIES),
            reply_model=SelectionReply,
            reply_partition=partition,
        )


# --- parts ---------------------------------------------------------------------------


async def bench_latency(bench: Bench) -> None:
    args = bench.args
    n = int(args.rate * args.duration)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    async with bench.requester(0) as requester:
        for i in range(50):  # warm-up: connections, metadata, caches
            await requester.request(_request(i % CLIENTS))
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def one(i: int, scheduled: float) -> None:
            try:
                reply = await requester.request(_request(i % CLIENTS), timeout_s=5)
            except MulambdaError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            if reply.status is not SelectionStatus.OK:
                failures[reply.status.value] = failures.get(reply.status.value, 0) + 1
                return
            latencies.append((loop.time() - scheduled) * 1000)

        tasks = []
        for i in range(n):
            scheduled = start + i / args.rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        offered_s = loop.time() - start
    print(
        f"latency    : {n} requests offered at {args.rate:g}/s ({n / offered_s:,.0f}/s achieved) "
        f"over {bench.registered} executors ({min(bench.registered, 1000)} matching)"
    )
    if latencies:
        print(
            f"             p50 {statistics.median(latencies):6.2f} ms  "
            f"p90 {_pct(latencies, 0.90):6.2f} ms  p99 {_pct(latencies, 0.99):6.2f} ms  "
            f"max {max(latencies):6.2f} ms   [p50 <= 5 ms, p99 <= 20 ms]"
        )
    if failures:
        print(f"             failures: {failures}")


def _load_process(
    config: KafkaConfig, catalog_prefix: str, partition: int, concurrency: int, duration: float
) -> tuple[int, int, list[float]]:
    """One requester process: closed loop for ``duration``; (replies, errors, latencies)."""
    return asyncio.run(_load(config, catalog_prefix, partition, concurrency, duration))


async def _load(
    config: KafkaConfig, catalog_prefix: str, partition: int, concurrency: int, duration: float
) -> tuple[int, int, list[float]]:
    catalog = load_catalog(catalog_prefix)
    requester: Requester[SelectionRequest, SelectionReply] = Requester(
        config,
        request_topic=catalog.name(Topic.SELECTION_REQUESTS),
        reply_topic=catalog.name(Topic.SELECTION_REPLIES),
        reply_model=SelectionReply,
        reply_partition=partition,
    )
    replies = errors = 0
    latencies: list[float] = []
    async with requester:
        for i in range(20):
            await requester.request(_request(i % CLIENTS))
        loop = asyncio.get_running_loop()
        end = loop.time() + duration

        async def worker(w: int) -> None:
            nonlocal replies, errors
            i = w
            while loop.time() < end:
                sent = loop.time()
                try:
                    reply = await requester.request(_request(i % CLIENTS), timeout_s=10)
                except MulambdaError:
                    errors += 1
                    continue
                if reply.status is SelectionStatus.OK:
                    replies += 1
                    latencies.append((loop.time() - sent) * 1000)
                else:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return replies, errors, latencies[:: max(1, len(latencies) // 20_000)]


async def bench_throughput(bench: Bench) -> None:
    args = bench.args
    assert bench.selector is not None
    pid = bench.selector.pid
    loop = asyncio.get_running_loop()
    # Spawned, not forked: a fork would inherit this process's running event loop.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.procs, mp_context=spawn) as pool:
        before = await bench.metric_sum("mulambda_selector_selections_total")
        cpu_before, wall_before = _cpu_s(pid), time.perf_counter()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool,
                    _load_process,
                    bench.kafka,
                    bench.topic_prefix,
                    1 + p,
                    args.concurrency,
                    args.duration,
                )
                for p in range(args.procs)
            )
        )
        wall = time.perf_counter() - wall_before
        cpu = _cpu_s(pid) - cpu_before
        after = await bench.metric_sum("mulambda_selector_selections_total")
    replies = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    latencies = [x for r in results for x in r[2]]
    # Each process adds a warm-up and start-up to the wall time: count replies over the
    # measured window only, and the selector's counter over the whole call.
    print(
        f"throughput : {args.procs} requester processes x {args.concurrency} in flight, "
        f"{args.duration:g} s closed loop"
    )
    print(
        f"             requesters: {replies / args.duration:,.0f} replies/s "
        f"({replies} ok, {errors} errors; p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {_pct(latencies, 0.99):.1f} ms)   [>= 5,000/s]"
    )
    print(
        f"             selector  : {after - before:,.0f} selections in {wall:.1f} s wall "
        f"(incl. requester start-up); CPU {cpu:.1f} s = {100 * cpu / wall:.0f}% of one core"
    )


async def bench_materialise(bench: Bench) -> None:
    args = bench.args
    assert bench.selector is not None
    n = max(1, bench.registered)
    half = args.events // 2
    statuses = [_status(i % n, in_flight=i % 5) for i in range(half)]
    probes = [_probe(i % n, (i // n) % CLIENTS, 1.0 + i % 300) for i in range(args.events - half)]
    await bench.store_caught_up()
    before = await bench.metric_sum("mulambda_selector_state_events_total")
    pid = bench.selector.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        publish_s = await bench.publish(Topic.EXECUTOR_STATUS, statuses, "executor_id")
        publish_s += await bench.publish(Topic.LATENCY_MEASUREMENTS, probes, "executor_id")
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.perf_counter()
    cpu_before = _cpu_s(pid)
    view_s: float | None = None
    ends = await bench.topic_ends()
    async with ViewStore(bench.settings.redis_url, key_prefix=bench.store_prefix) as store:
        while True:
            if view_s is None:
                applied = await bench.metric_sum("mulambda_selector_state_events_total")
                if applied - before >= args.events:
                    view_s = time.perf_counter() - resumed
            stored = await store.offsets()
            if all(stored.get(tp, 0) >= end for tp, end in ends.items() if end > 0):
                store_s = time.perf_counter() - resumed
                break
            if time.perf_counter() - resumed > 300:
                raise MulambdaError("materialisation did not finish within 300 s")
            await asyncio.sleep(0.02)
    cpu = _cpu_s(pid) - cpu_before
    print(
        f"materialise: {args.events} events ({half} statuses, {args.events - half} probes; "
        f"published in {publish_s:.1f} s while the selector was paused)"
    )
    view_rate = f"{args.events / view_s:,.0f}/s" if view_s else "n/a"
    print(
        f"             store offsets at the end after {store_s:.2f} s = "
        f"{args.events / store_s:,.0f} events/s (view counter: {view_rate}); "
        f"selector CPU {cpu:.1f} s   [>= 20,000 events/s]"
    )


async def bench_fill(bench: Bench, total: int) -> None:
    started = time.perf_counter()
    await bench.register(total)
    await bench.wait_view(total)
    await bench.store_caught_up()
    print(
        f"fill       : {total} executors registered, each with a status and {CLIENTS} probes; "
        f"view and store caught up {time.perf_counter() - started:.1f} s after publishing began"
    )


async def bench_restart(bench: Bench) -> None:
    await bench.stop_selector()
    ready_s = await bench.start_selector()
    entry = bench.ready_log()
    views = await bench.metric_sum("mulambda_selector_view_executors")
    phases = ", ".join(
        f"{k.removesuffix('_s')} {entry[k]:.2f}"
        for k in ("connect_s", "rebuild_s", "catch_up_s", "join_s")
        if k in entry
    )
    print(
        f"restart    : spawn to /readyz {ready_s:.2f} s with {views:.0f} executors in the view; "
        f"start() {entry.get('start_s', '?')} s ({phases}); the rest is interpreter start-up "
        f"and imports   [<= 2 s]"
    )


async def bench_memory(bench: Bench) -> None:
    assert bench.selector is not None
    views = await bench.metric_sum("mulambda_selector_view_executors")
    # A few selections so the reply path is warm too.
    async with bench.requester(0) as requester:
        await asyncio.gather(*(requester.request(_request(i % CLIENTS)) for i in range(200)))
    rss, peak = _rss_mb(bench.selector.pid)
    print(
        f"memory     : selector VmRSS {rss:.0f} MB (peak {peak:.0f} MB) with {views:.0f} "
        f"executors, {CLIENTS} probes each   [<= 200 MB]"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument("--executors", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--restart-executors", type=int, default=10_000)
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {PARTS}")
    # aiokafka warns about leader elections of the topics created just now; noise here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = Settings()
    print(
        f"kafka {settings.kafka_bootstrap_servers}, store {settings.redis_url}, "
        f"{os.cpu_count()} CPUs, selector in its own process"
    )
    async with Bench(settings, args) as bench:
        await bench.register(args.executors)
        ready_s = await bench.start_selector()
        await bench.wait_view(args.executors)
        print(
            f"setup      : {args.executors} executors; selector ready {ready_s:.2f} s after spawn"
        )
        if "latency" in parts:
            await bench_latency(bench)
        if "throughput" in parts:
            await bench_throughput(bench)
        if "materialise" in parts:
            await bench_materialise(bench)
        if parts & {"restart", "memory"}:
            await bench_fill(bench, args.restart_executors)
            if "memory" in parts:
                await bench_memory(bench)
            if "restart" in parts:
                await bench_restart(bench)
                if "memory" in parts:
                    await bench_memory(bench)


if __name__ == "__main__":
    asyncio.run(main())
