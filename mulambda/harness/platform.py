"""A whole local MuLambda platform as processes, on private infrastructure, for fault runs.

:class:`LocalPlatform` does what ``deploy/local/up.sh`` does, but for a test or a
benchmark that is going to break things:

* its **own** Kafka and Redis (MinIO only when asked: synthetic executors need none),
  a :class:`~mulambda.harness.infra.PrivateInfra` (``deploy/local/infra.sh`` with a
  private ``MULAMBDA_HOME`` and free ports), so breaking them never touches the servers
  other sessions share; Kafka is one broker, or with ``kafka_nodes=3`` production's
  topology, three (replication 3, ``min.insync.replicas`` 2);
* ``mulambda topics apply`` (every topic replicated on every node);
* ``selectors`` selectors and ``routers`` routers, each with its own id and metrics port
  (``MULAMBDA_METRICS_PORT``), and ``executors`` executor processes
  (``mulambda executor serve --time-scale ... --synthetic ...``), each with one companion
  per model under an executor id of its own (``bench-e<process>-<model>``);
* it waits for every executor's models, every ``/readyz`` and every registration.

Then it offers the faults: :meth:`~LocalPlatform.kill` (any signal),
:meth:`~LocalPlatform.pause` / :meth:`~LocalPlatform.resume` of a worker (SIGSTOP /
SIGCONT: a process frozen past its session timeout comes back as a zombie), restart of a
worker, of Kafka, or of Redis with its data wiped (``$MULAMBDA_HOME/redis/data``), a
kill -9 of one Kafka node (:meth:`~LocalPlatform.kill_infra`; the node leading the most
partitions is :meth:`~LocalPlatform.busiest_broker`) and its start again, and
:meth:`~LocalPlatform.set_executor_delay` to make every executor slow (a rolling
restart onto a fixed-delay profiles file: the emulator cannot change its delay at run
time).
:meth:`~LocalPlatform.heal` puts back whatever a fault left broken.

No process is left behind: ``stop()`` (idempotent, also run when ``start()`` fails)
terminates every worker (TERM, then KILL), stops the infrastructure and removes the
home. Workers also get ``PR_SET_PDEATHSIG`` so they die with the process that started
them, and the infrastructure's reaper cleans up if that process dies without calling
``stop()`` (killed, or a hard timeout).

Workers run the code of the checkout this module belongs to (``PYTHONPATH``), with the
interpreter running it; none of the caller's ``MULAMBDA_*`` settings leak into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import yaml

from mulambda.emulator.profiles import profile_by_name
from mulambda.errors import MulambdaError
from mulambda.executors.heartbeats import STATS_PATH
from mulambda.executors.registration import read_executors
from mulambda.harness.infra import REPO, PlatformError, PrivateInfra, clean_environ, free_ports
from mulambda.kafka import Admin, KafkaConfig
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.catalog import Catalog, Topic, load_catalog

log = logging.getLogger(__name__)

TRAITS: Final = ("classification", "feature", "confidence")
"""Traits every synthetic executor registers (as ``deploy/local/up.sh`` does)."""

_PR_SET_PDEATHSIG: Final = 1
# Loaded once here: the child between fork and exec must not load libraries.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a worker must not outlive its harness.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    """Shape of the platform: how many of each worker, and how they are configured."""

    selectors: int = 2
    routers: int = 2
    executors: int = 3
    """Executor processes; each serves every model in ``models``."""
    models: tuple[str, ...] = ("FastBad", "MidOK", "SlowGood")
    """Synthetic profiles (mulambda.emulator.profiles) every executor process serves."""
    time_scale: float = 0.0
    """Multiplies the synthetic delays; 0 answers at once (least CPU)."""
    executor_delay_ms: float = 0.0
    """When set, every inference call takes exactly this long: the executors serve
    ``models`` from a profiles file with this base delay and no other term (status
    requests stay instant, so companions still see the models AVAILABLE)."""
    heartbeat_interval_s: float = 2.0
    """Companion heartbeat interval."""
    router_concurrency: int = 64
    """Requests each router routes at once (``mulambda router --concurrency``)."""
    selection_timeout_s: float = 2.0
    """``mulambda router --selection-timeout``."""
    session_timeout_s: float = 3.0
    """Group session timeout of routers and selectors (the local broker allows 1 s): how
    long a killed worker's partitions wait before the survivors take them over."""
    delivery_mode: str = "at-least-once"
    """``MULAMBDA_DELIVERY_MODE`` of the routers (``exactly-once`` uses transactions)."""
    infra: tuple[str, ...] = ("kafka", "redis")
    """infra.sh components to run (add ``minio`` for executors that pull models)."""
    kafka_nodes: int = 1
    """Kafka brokers: 1, or 3 (``MULAMBDA_KAFKA_NODES``: nodes ``kafka-1``..``kafka-3``;
    topics are created with one replica per node)."""
    kafka_request_log: bool = False
    """The broker logs every request (:mod:`mulambda.harness.requests_log` counts them);
    it costs broker CPU, so CPU figures of such a run overstate the broker's."""
    log_level: str = "INFO"
    """``MULAMBDA_LOG_LEVEL`` of the workers (their logs stay in the home)."""
    start_timeout_s: float = 180.0
    """Bound on starting the infrastructure, and separately on the workers' readiness."""
    stop_timeout_s: float = 25.0
    """How long a worker may take to exit after SIGTERM before it is killed."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """More ``MULAMBDA_*`` settings for every worker."""

    def executor_id(self, process: int, model: str) -> str:
        """The executor id of ``model`` on executor process ``process``."""
        return f"bench-e{process}-{model}"

    def executor_ids(self) -> list[str]:
        """Every executor id the platform registers."""
        return [self.executor_id(i, m) for i in range(self.executors) for m in self.models]


@dataclass(slots=True)
class Worker:
    """One worker process the platform manages."""

    name: str
    """``selector-0``, ``router-1``, ``executor-2``, ``companion-2-MidOK``."""
    kind: str
    """selector, router, executor or companion."""
    index: int
    model: str | None = None
    """For companions: the model (the executor process is ``index``)."""
    port: int | None = None
    """Metrics port (selector, router) or serving port (executor)."""
    process: asyncio.subprocess.Process | None = None
    started: int = 0
    """How many times it was launched."""
    delay_ms: float = 0.0
    """For executors: the fixed inference delay it runs with (0: the synthetic profiles)."""
    paused: bool = False
    """SIGSTOPped by :meth:`LocalPlatform.pause` and not continued since."""

    @property
    def pid(self) -> int | None:
        """Pid of the running process, if any."""
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        """Launched and not exited."""
        return self.process is not None and self.process.returncode is None


class LocalPlatform(Lifecycle):
    """The platform of a :class:`PlatformSpec`, as local processes (module docstring)."""

    def __init__(
        self,
        spec: PlatformSpec | None = None,
        *,
        python: str = sys.executable,
        keep_home: bool = False,
    ) -> None:
        self.spec = spec or PlatformSpec()
        self._python = python
        self._keep_home = keep_home
        self.catalog: Catalog = load_catalog("")
        self.infra: PrivateInfra | None = None
        self.workers: dict[str, Worker] = {}
        self._http: aiohttp.ClientSession | None = None
        self._profiles = [profile_by_name(m) for m in self.spec.models]
        self.killed_infra: list[str] = []
        """Infrastructure components :meth:`kill_infra` killed and nothing started since."""
        self.kill_history: list[str] = []
        """Every component :meth:`kill_infra` killed, in order."""

    # --- addresses ---------------------------------------------------------------------

    def _infra(self) -> PrivateInfra:
        if self.infra is None:
            raise PlatformError("platform is not planned")
        return self.infra

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of every private Kafka broker, comma-separated."""
        return self._infra().bootstrap_servers

    def kafka(self, client_id: str = "mulambda-bench") -> KafkaConfig:
        """A KafkaConfig for the private broker."""
        return KafkaConfig(
            bootstrap_servers=self.bootstrap_servers, request_timeout_s=10.0, client_id=client_id
        )

    def settings_env(self) -> dict[str, str]:
        """The ``MULAMBDA_*`` connection settings of the private instance, for workers."""
        infra = self._infra()
        return {
            "MULAMBDA_KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers,
            "MULAMBDA_REDIS_URL": infra.redis_url,
            "MULAMBDA_MINIO_ENDPOINT": infra.minio_endpoint,
            "MULAMBDA_TOPIC_PREFIX": "",
            "MULAMBDA_LOG_LEVEL": self.spec.log_level,
            **self.spec.extra_env,
        }

    def worker(self, name: str) -> Worker:
        """The worker called ``name``; PlatformError naming the known ones otherwise."""
        try:
            return self.workers[name]
        except KeyError:
            raise PlatformError(f"no worker {name!r}; known: {', '.join(self.workers)}") from None

    def of_kind(self, kind: str) -> list[Worker]:
        """Every worker of ``kind``, in index order."""
        return [w for w in self.workers.values() if w.kind == kind]

    # --- lifecycle ---------------------------------------------------------------------

    def plan(self) -> None:
        """Pick the ports and name the workers (no process starts); ``start`` calls it."""
        if self.infra is not None:
            return
        spec = self.spec
        self.infra = PrivateInfra(
            spec.infra,
            start_timeout_s=spec.start_timeout_s,
            keep_home=self._keep_home,
            kafka_nodes=spec.kafka_nodes,
            kafka_request_log=spec.kafka_request_log,
        )
        count = spec.executors + spec.selectors + spec.routers
        spare = iter(free_ports(count, exclude=self.infra.ports.values()))
        for i in range(spec.executors):
            self._add(Worker(f"executor-{i}", "executor", i, port=next(spare)))
            for model in spec.models:
                self._add(Worker(f"companion-{i}-{model}", "companion", i, model=model))
        for i in range(spec.selectors):
            self._add(Worker(f"selector-{i}", "selector", i, port=next(spare)))
        for i in range(spec.routers):
            self._add(Worker(f"router-{i}", "router", i, port=next(spare)))

    async def start(self) -> None:
        """Infrastructure, topics, workers; returns when everything is ready."""
        if self._http is not None:
            return
        self.plan()
        infra = self._infra()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            await infra.start()
            await self._topics_apply()
            await self.start_workers()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every worker and the infrastructure, remove the home; safe to call twice."""
        http, self._http = self._http, None
        if http is None:
            return
        try:
            await self.stop_workers(list(self.workers.values()))
        finally:
            try:
                await self._infra().stop()
            finally:
                await http.close()

    # --- workers -----------------------------------------------------------------------

    async def start_workers(self) -> None:
        """Start every worker that is not running, in up.sh's order, and wait for all."""
        executors = [w for w in self.of_kind("executor") if not w.alive]
        for worker in executors:
            await self._spawn(worker)
        await self._wait_executors(executors)
        # Companions once their executor answers, so the first heartbeat says AVAILABLE.
        rest = [w for w in self.workers.values() if w.kind != "executor" and not w.alive]
        for worker in rest:
            await self._spawn(worker)
        await self._wait_ready([w for w in rest if w.kind in ("selector", "router")])
        await self.wait_registered()

    async def stop_workers(self, workers: Iterable[Worker]) -> None:
        """SIGTERM the workers at once, wait for each, SIGKILL those still alive."""
        running = [w for w in workers if w.alive]
        for worker in running:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
                    if worker.paused:  # a stopped process acts on SIGTERM only once continued
                        worker.process.send_signal(signal.SIGCONT)
                worker.paused = False
        await asyncio.gather(*(self._reap(w, self.spec.stop_timeout_s) for w in running))

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a worker; for SIGKILL and SIGTERM, wait until it is gone."""
        worker = self.worker(name)
        process = worker.process
        if process is None or process.returncode is not None:
            raise PlatformError(f"{name} is not running")
        process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            await self._reap(worker, self.spec.stop_timeout_s)

    async def pause(self, name: str) -> None:
        """SIGSTOP a worker: it stops dead, its connections stay open, and nothing it
        holds is released until :meth:`resume` (or ``stop``)."""
        worker = self.worker(name)
        process = worker.process
        if process is None or process.returncode is not None:
            raise PlatformError(f"{name} is not running")
        process.send_signal(signal.SIGSTOP)
        worker.paused = True

    async def resume(self, name: str) -> None:
        """SIGCONT a worker :meth:`pause` stopped; it goes on where it was."""
        worker = self.worker(name)
        process = worker.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGCONT)
        worker.paused = False

    async def wait_partitions_moved(
        self, name: str, group_id: str = "mulambda-router", timeout_s: float = 60.0
    ) -> None:
        """Wait until ``group_id`` is stable without worker ``name`` (its client id is
        ``bench-<name>``) and its other members own every partition of the request topic;
        PlatformError after ``timeout_s``."""
        topic = self.catalog.name(Topic.INFERENCE_REQUESTS)
        gone = f"bench-{name}"
        async with Admin(self.kafka("mulambda-bench-group")) as admin:
            wanted = set(await admin.partitions(topic))
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    owned = await admin.group_assignment(group_id)
                except MulambdaError as exc:
                    log.info("group %s not described yet: %s", group_id, exc.reason)
                    owned = None
                if owned is not None and gone not in owned:
                    held = set().union(*owned.values()) if owned else set()
                    if wanted <= held:
                        return
                if time.monotonic() >= deadline:
                    raise PlatformError(
                        f"the partitions of {name} did not move within {timeout_s:g}s "
                        f"(group {group_id}: {owned})"
                    )
                await asyncio.sleep(0.25)

    async def restart(self, name: str) -> None:
        """Stop the worker if it runs (SIGTERM), start it again and wait until it is ready."""
        worker = self.worker(name)
        await self.stop_workers([worker])
        await self._spawn(worker)
        if worker.kind == "executor":
            await self._wait_executors([worker])
        elif worker.kind in ("selector", "router"):
            await self._wait_ready([worker])
        else:
            await self.wait_registered()

    async def set_executor_delay(self, delay_ms: float) -> None:
        """Restart the executors one at a time so every inference takes ``delay_ms``.

        The emulator has no way to change its delay at run time, hence the restart.
        """
        for worker in self.of_kind("executor"):
            if worker.delay_ms != delay_ms or not worker.alive:
                worker.delay_ms = delay_ms
                await self.restart(worker.name)

    async def heal(self) -> list[str]:
        """Put back what faults left: infrastructure down, workers dead, slow executors.

        Returns what was done, one line each (empty when nothing was needed).
        """
        done: list[str] = []
        for worker in self.workers.values():
            if worker.paused:
                await self.resume(worker.name)
                done.append(f"{worker.name}: continued (SIGCONT)")
        infra = self._infra()
        if not await infra.running():
            await infra.run("start", *infra.components)
            self.killed_infra.clear()
            done.append("started the infrastructure again")
        for worker in self.of_kind("executor"):
            if worker.delay_ms != self.spec.executor_delay_ms:
                worker.delay_ms = self.spec.executor_delay_ms
                await self.stop_workers([worker])
                done.append(f"{worker.name}: back to {worker.delay_ms:g} ms delay")
        dead = [w.name for w in self.workers.values() if not w.alive]
        if dead:
            await self.start_workers()
            done.append("restarted " + ", ".join(dead))
        return done

    async def restart_all_workers(self) -> None:
        """Stop every worker, then start them all as at the beginning."""
        await self.stop_workers(list(self.workers.values()))
        await self.start_workers()

    async def served_requests(self) -> dict[str, int]:
        """Requests each running executor process has answered so far (its stats page)."""
        counts: dict[str, int] = {}
        session = self._http
        for worker in self.of_kind("executor"):
            if session is None or not worker.alive:
                continue
            try:
                url = f"http://127.0.0.1:{worker.port}{STATS_PATH}"
                async with session.get(url) as response:
                    stats = await response.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if isinstance(stats, dict) and isinstance(stats.get("requests"), int):
                counts[worker.name] = stats["requests"]
        return counts

    async def busiest_executor(self, window_s: float = 1.0) -> str:
        """The executor process that answered the most requests during ``window_s``."""
        before = await self.served_requests()
        await asyncio.sleep(window_s)
        after = await self.served_requests()
        deltas = {name: count - before.get(name, 0) for name, count in after.items()}
        if not deltas:
            raise PlatformError("no executor process answers its stats page")
        return max(deltas, key=deltas.__getitem__)

    def rss_mb(self, name: str) -> float | None:
        """Resident memory (VmRSS) of a worker's process in MB, None if it is not running."""
        pid = self.worker(name).pid
        if pid is None:
            return None
        return read_rss_mb(pid)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a worker's log."""
        path = self._log_path(self.worker(name))
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return f"(no log at {path})"
        return "\n".join(text.splitlines()[-lines:])

    # --- infrastructure ----------------------------------------------------------------

    async def restart_infra(self, component: str, *, wipe: bool = False) -> None:
        """``infra.sh restart COMPONENT``; with ``wipe``, its data is deleted in between."""
        await self._infra().restart(component, wipe=wipe)

    async def kill_infra(self, component: str) -> None:
        """``infra.sh kill COMPONENT`` (SIGKILL, data kept): one Kafka node, say ``kafka-2``."""
        await self._infra().kill(component)
        self.killed_infra.append(component)
        self.kill_history.append(component)

    async def start_infra(self, component: str) -> None:
        """``infra.sh start COMPONENT``; returns once it is ready."""
        await self._infra().start_component(component)
        if component in self.killed_infra:
            self.killed_infra.remove(component)

    async def start_killed_infra(self) -> None:
        """Start again every component :meth:`kill_infra` killed."""
        for component in list(self.killed_infra):
            await self.start_infra(component)

    async def busiest_broker(self) -> str:
        """The Kafka node (``kafka-N``; node ids are N) leading the most partitions of the
        catalog's topics now; ``kafka`` on the single broker."""
        infra = self._infra()
        if infra.kafka_nodes == 1:
            return "kafka"
        async with Admin(self.kafka("mulambda-bench-leaders")) as admin:
            node = await admin.busiest_leader(
                [self.catalog.name(topic) for topic in self.catalog.specs]
            )
        return f"kafka-{node}"

    async def outage(self, component: str, seconds: float) -> None:
        """``infra.sh stop COMPONENT``, ``seconds`` of nothing, ``infra.sh start COMPONENT``."""
        infra = self._infra()
        await infra.run("stop", component)
        await asyncio.sleep(seconds)
        await infra.run("start", component)

    def topics_apply_argv(self) -> list[str]:
        """The ``mulambda topics apply`` command: one replica of each topic per node."""
        argv = [self._python, "-m", "mulambda", "topics", "apply"]
        if self.spec.kafka_nodes > 1:
            argv += ["--replication-factor", str(self.spec.kafka_nodes)]
        return argv

    async def _topics_apply(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.topics_apply_argv(),
            env=self._env(),
            cwd=self._home(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 120)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise PlatformError("mulambda topics apply did not finish within 120s") from None
        if process.returncode != 0:
            raise PlatformError(f"mulambda topics apply failed:\n{out.decode(errors='replace')}")

    # --- internals ---------------------------------------------------------------------

    def _home(self) -> Path:
        return self._infra().require_home()

    def _add(self, worker: Worker) -> None:
        worker.delay_ms = self.spec.executor_delay_ms
        self.workers[worker.name] = worker

    def _log_path(self, worker: Worker) -> Path:
        return self._infra().workers_dir / f"{worker.name}.log"

    def _env(self, metrics_port: int | None = None) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**clean_environ(), **self.settings_env(), "PYTHONPATH": path}
        if metrics_port is not None:
            env["MULAMBDA_METRICS_PORT"] = str(metrics_port)
        return env

    def _group_env(self, instance_id: str, metrics_port: int | None) -> dict[str, str]:
        """Environment of a group worker: static membership under its stable name, and
        the spec's session timeout."""
        env = self._env(metrics_port=metrics_port)
        env["MULAMBDA_KAFKA_GROUP_INSTANCE_ID"] = instance_id
        env["MULAMBDA_KAFKA_SESSION_TIMEOUT_S"] = f"{self.spec.session_timeout_s:g}"
        env["MULAMBDA_KAFKA_HEARTBEAT_INTERVAL_S"] = f"{self.spec.session_timeout_s / 3:g}"
        return env

    def command(self, worker: Worker) -> tuple[list[str], dict[str, str]]:
        """The command line and environment ``worker`` is launched with."""
        spec = self.spec
        base = [self._python, "-m", "mulambda"]
        if worker.kind == "executor":
            argv = [*base, "executor", "serve", "--port", str(worker.port)]
            if worker.delay_ms:
                argv += ["--profiles-file", str(self._slow_profiles(worker.delay_ms))]
                argv += ["--time-scale", "1"]
            else:
                argv += ["--time-scale", f"{spec.time_scale:g}"]
            for model in spec.models:
                argv += ["--synthetic", model]
            return argv, self._env()
        if worker.kind == "companion":
            profile = next((p for p in self._profiles if p.name == worker.model), None)
            if worker.model is None or profile is None:
                raise PlatformError(f"{worker.name}: no synthetic profile {worker.model!r}")
            executor = self.workers[f"executor-{worker.index}"]
            model_type, input_format, output_format = TRAITS
            argv = [
                *base,
                "companion",
                "--executor-id",
                spec.executor_id(worker.index, worker.model),
                "--endpoint",
                f"http://127.0.0.1:{executor.port}",
                "--model-name",
                worker.model,
                "--model-type",
                model_type,
                "--input-format",
                input_format,
                "--output-format",
                output_format,
                "--accuracy",
                f"{profile.accuracy:g}",
                "--model-data-delay-ms-per-element",
                f"{profile.alpha * 1000 * spec.time_scale:g}",
                "--heartbeat-interval",
                f"{spec.heartbeat_interval_s:g}",
            ]
            return argv, self._env(metrics_port=0)
        if worker.kind == "selector":
            argv = [*base, "selector", "--selector-id", f"bench-selector-{worker.index}"]
            return argv, self._group_env(f"bench-selector-{worker.index}", worker.port)
        if worker.kind == "router":
            argv = [
                *base,
                "router",
                "--router-id",
                f"bench-router-{worker.index}",
                "--concurrency",
                str(spec.router_concurrency),
                "--selection-timeout",
                f"{spec.selection_timeout_s:g}",
            ]
            env = self._group_env(f"bench-router-{worker.index}", worker.port)
            env["MULAMBDA_DELIVERY_MODE"] = spec.delivery_mode
            return argv, env
        raise PlatformError(f"unknown worker kind {worker.kind!r}")

    def _slow_profiles(self, delay_ms: float) -> Path:
        return self._home() / f"profiles-{delay_ms:g}ms.yaml"

    def _write_slow_profiles(self, delay_ms: float) -> None:
        # Same names and confidences, so registrations stay true; only the delay differs.
        slow = [
            {**p.to_mapping(), "D": delay_ms, "alpha": 0.0, "beta": 0.0, "J": 0.0}
            for p in self._profiles
        ]
        path = self._slow_profiles(delay_ms)
        path.write_text(yaml.safe_dump({"executor_profiles": slow}, sort_keys=False))

    async def _spawn(self, worker: Worker) -> None:
        if worker.kind == "executor" and worker.delay_ms:
            self._write_slow_profiles(worker.delay_ms)
        argv, env = self.command(worker)
        path = self._log_path(worker)
        with path.open("ab") as handle:
            handle.write(f"=== launch {worker.started + 1}: {' '.join(argv[1:])}\n".encode())
            handle.flush()
            worker.process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=self._home(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        worker.started += 1
        worker.paused = False
        (self._infra().workers_dir / f"{worker.name}.pid").write_text(f"{worker.pid}\n")

    async def _reap(self, worker: Worker, timeout_s: float) -> None:
        process = worker.process
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "%s did not exit within %.0fs of SIGTERM; killing it", worker.name, timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.wait_for(process.wait(), 10)

    async def _wait(
        self,
        what: str,
        check: Callable[[], Awaitable[bool]],
        workers: Sequence[Worker],
        timeout_s: float | None = None,
    ) -> None:
        """Poll ``check`` until true; fail fast if one of ``workers`` exits."""
        deadline = time.monotonic() + (timeout_s or self.spec.start_timeout_s)
        while True:
            if await check():
                return
            for worker in workers:
                if not worker.alive:
                    code = worker.process.returncode if worker.process else None
                    raise PlatformError(
                        f"{worker.name} exited ({code}) while waiting for {what}:\n"
                        + self.log_tail(worker.name)
                    )
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {w.name}\n{self.log_tail(w.name, 8)}" for w in workers)
                raise PlatformError(f"{what}: not ready in time\n{tails}")
            await asyncio.sleep(0.25)

    async def _get_ok(self, url: str, needle: str | None = None) -> bool:
        session = self._http
        if session is None:
            return False
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return False
                return needle is None or needle in await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_executors(self, workers: Sequence[Worker]) -> None:
        async def ready() -> bool:
            for worker in workers:
                for model in self.spec.models:
                    url = f"http://127.0.0.1:{worker.port}/v1/models/{model}"
                    if not await self._get_ok(url, '"AVAILABLE"'):
                        return False
            return True

        await self._wait(f"executors {[w.name for w in workers]}", ready, workers)

    async def _wait_ready(self, workers: Sequence[Worker]) -> None:
        async def ready() -> bool:
            for worker in workers:
                if not await self._get_ok(f"http://127.0.0.1:{worker.port}/readyz"):
                    return False
            return True

        await self._wait(f"/readyz of {[w.name for w in workers]}", ready, workers)

    async def wait_registered(self) -> None:
        """Wait until every executor id is registered on the compacted topic."""
        wanted = set(self.spec.executor_ids())
        companions = self.of_kind("companion")

        async def registered() -> bool:
            try:
                found = await read_executors(self.kafka("mulambda-bench-check"), self.catalog)
            except MulambdaError:
                return False
            return wanted <= found.keys()

        await self._wait(f"registrations of {len(wanted)} executors", registered, companions)


def read_rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB from /proc, None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None
