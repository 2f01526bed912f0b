"""Where a local broker restart's time goes: ``infra.sh stop kafka`` and ``start kafka``.

For each infra script given (``LABEL=PATH``, e.g. this checkout's and a worktree of an
earlier commit's), a broker of its own is started under a temp ``MULAMBDA_HOME`` on free
ports, given the topic catalog and a transactional write (so the transaction log exists,
as on the platform), then restarted ``--restarts`` times; the scripts take turns, so
machine noise hits them alike. Per restart: seconds of ``stop`` and of ``start`` (until
infra.sh calls the broker ready), and from the broker's log the JVM's first line, the log
loading ("Loaded N logs in X ms") and "Kafka Server started", each from the launch.

    .venv/bin/python benchmarks/bench_broker_restart.py \\
        before=/tmp/before/deploy/local/infra.sh after=deploy/local/infra.sh [--restarts 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from mulambda.harness.infra import clean_environ, free_ports
from mulambda.kafka import Admin, KafkaConfig
from mulambda.wire.catalog import load_catalog

_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
_LOADED = re.compile(r"Loaded (\d+) logs in (\d+)ms")


@dataclass
class Broker:
    label: str
    infra: Path
    home: Path
    ports: list[int]
    rows: list[dict[str, float]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = clean_environ()
        env.update(
            MULAMBDA_HOME=str(self.home),
            MULAMBDA_KAFKA_PORT=str(self.ports[0]),
            MULAMBDA_KAFKA_CONTROLLER_PORT=str(self.ports[1]),
        )
        return env

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def run(self, command: str) -> float:
        started = time.monotonic()
        subprocess.run(
            ["bash", str(self.infra), command, "kafka"],
            env=self.env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.monotonic() - started


def _log_marks(log: Path, launched: float) -> dict[str, float]:
    """Seconds from the launch (wall clock ``launched``) to the log's milestones."""
    marks: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched
        marks.setdefault("first log line", at)
        if (loaded := _LOADED.search(line)) is not None:
            marks["logs loaded"] = at
            marks["logs"] = float(loaded.group(1))
            marks["log loading"] = int(loaded.group(2)) / 1000
        if "Kafka Server started" in line:
            marks["server started"] = at
            break
    return marks


async def _populate(bootstrap: str) -> None:
    config = KafkaConfig(bootstrap_servers=bootstrap, request_timeout_s=30.0)
    async with Admin(config) as admin:
        await admin.apply(load_catalog(""))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="bench-restart")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(100):
                await producer.send("mulambda.inference-results", f"r{i}".encode())
    finally:
        await producer.stop()


def _restart(broker: Broker) -> None:
    stop_s = broker.run("stop")
    launched = time.time()
    start_s = broker.run("start")
    row = {"stop": stop_s, "start": start_s}
    row.update(_log_marks(broker.home / "kafka" / "kafka.log", launched))
    broker.rows.append(row)
    print(
        f"{broker.label:>8}: stop {stop_s:5.1f} s  start {start_s:5.1f} s  "
        + "  ".join(f"{k} {v:.1f}" for k, v in row.items() if k not in ("stop", "start")),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="+", help="LABEL=PATH of an infra.sh")
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    brokers: list[Broker] = []
    taken: list[int] = []
    try:
        for spec in args.scripts:
            label, _, path = spec.partition("=")
            ports = free_ports(2, exclude=taken)
            taken.extend(ports)
            home = Path(tempfile.mkdtemp(prefix=f"mulambda-restart-{label}-"))
            broker = Broker(label, Path(path).resolve(), home, ports)
            brokers.append(broker)
            broker.run("start")
            asyncio.run(_populate(broker.bootstrap))
        for _ in range(args.restarts):
            for broker in brokers:
                _restart(broker)
    finally:
        for broker in brokers:
            subprocess.run(
                ["bash", str(broker.infra), "stop"],
                env=broker.env(),
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            shutil.rmtree(broker.home, ignore_errors=True)
    print()
    print(f"{'medians':>8}  " + "  ".join(f"{k:>15}" for k in brokers[0].rows[0]))
    for broker in brokers:
        keys = broker.rows[0].keys()
        medians = [statistics.median(r.get(k, float("nan")) for r in broker.rows) for k in keys]
        print(f"{broker.label:>8}  " + "  ".join(f"{m:>15.2f}" for m in medians))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
