"""Overload on the quick-start platform: what a producer without MuLambda code gets when
it offers more than ``deploy/local/up.sh``'s synthetic executors can serve (issue 17, 8).

Against a running ``up.sh`` platform (``source .mulambda/env``; the ``MULAMBDA_*``
variables name the broker and the topic prefix, ``MULAMBDA_SYNTHETIC_MODELS`` and
``MULAMBDA_TIME_SCALE`` the models up.sh serves, with up.sh's defaults), a plain aiokafka
producer publishes hand-written JSON inference requests at a fixed ``--rate`` (100/s)
for ``--duration`` (15 s) from ``--clients`` (8) client ids, weights latency 0.8 /
accuracy 0.2, ``--deadline`` (10 s) deadlines, and a group-less aiokafka consumer reads
every partition of the inference-results topic from its end. Nothing of the SDK, the
router or the selector runs in this process.

Printed (and written with ``--json``): ok answers per second against the executors'
total capacity (from the profiles and the time scale: ``1 / (beta * scale)`` each; see
:mod:`mulambda.harness.quickstart`), the error count and the errors' latency p50/p99 (from
each request's scheduled send to its result being read), ok latencies, the split per
executor, the error reasons, the load average before and after, and how long the router,
selector and executor processes had been running. The issue measured *freshly started
workers* (nothing learned yet): restart them (``deploy/local/down.sh --keep-infra`` and
``up.sh``) before each run to measure that, or give ``--warmup-s`` to send at
``--warmup-rate`` first (those requests are not counted) and measure warmed-up workers.

    .venv/bin/python benchmarks/bench_quickstart_overload.py [--rate 100] [--duration 15] \\
        [--warmup-s 0] [--json benchmarks/results/quickstart-overload-LABEL.json]

Target (issue 17): ok answers >= 80 % of the capacity, errors' median latency <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from mulambda.emulator.profiles import profile_by_name
from mulambda.harness.quickstart import OverloadTally, capacities, render
from mulambda.runtime.settings import Settings
from mulambda.wire.catalog import Topic, load_catalog

REPO = Path(__file__).resolve().parent.parent
WORKERS = ("router", "selector", "executor")
TRAITS = {"model_type": "classification", "input_format": "feature", "output_format": "confidence"}


def _iso(moment: datetime) -> str:
    # As a hand-written producer in any language would: UTC, milliseconds, "Z".
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def request_bytes(
    *, message_id: str, client_id: str, reply_topic: str, deadline: datetime, args: Any
) -> bytes:
    """One inference request, written field by field (``topics/schemas``), not by the SDK."""
    now = datetime.now(UTC)
    return orjson.dumps(
        {
            "schema_version": 1,
            "message_id": message_id,
            "timestamp": _iso(now),
            "correlation_id": message_id,
            "reply_topic": reply_topic,
            "deadline": _iso(deadline),
            "client_id": client_id,
            "traits": TRAITS,
            "weights": {"latency": args.latency, "accuracy": args.accuracy},
            "verb": "predict",
            "body": args.body,
        }
    )


def worker_ages_s(home: Path) -> dict[str, float | None]:
    """Seconds each up.sh worker process has been running (None: no live pid file)."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    ages: dict[str, float | None] = {}
    for name in WORKERS:
        try:
            pid = int((home / "workers" / f"{name}.pid").read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            ages[name] = None
            continue
        # Field 22 (starttime, in ticks since boot); the name (field 2) may hold spaces.
        started = int(stat.rpartition(")")[2].split()[19]) / ticks
        ages[name] = uptime - started
    return ages


class Results:
    """Reads every partition of the reply topic from its end; hands records on."""

    def __init__(self, bootstrap: str, topic: str, on_result: Callable[[Any, float], Any]):
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        self._topic = topic
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self._topic) or set()
        if not partitions:
            raise SystemExit(f"topic {self._topic} not found: is the platform up?")
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # fix the start before the first request goes out
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    try:
                        payload = orjson.loads(record.value or b"null")
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(payload, dict):
                        self._on_result(payload, now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def send_schedule(
    producer: AIOKafkaProducer,
    args: Any,
    *,
    rate: float,
    duration_s: float,
    topic: str,
    reply_topic: str,
    clients: list[str],
    on_sent: Callable[[str, float], None],
) -> None:
    """Publish at a fixed ``rate`` for ``duration_s`` (open loop: due whatever came back)."""
    count = round(rate * duration_s)
    start, wall = time.monotonic(), datetime.now(UTC)
    deliveries = []
    for i in range(count):
        offset = i / rate
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        message_id = os.urandom(16).hex()
        client = clients[i % len(clients)]
        deadline = wall + timedelta(seconds=offset + args.deadline)
        on_sent(message_id, start + offset)
        value = request_bytes(
            message_id=message_id, client_id=client, reply_topic=reply_topic,
            deadline=deadline, args=args,
        )  # fmt: skip
        deliveries.append(await producer.send(topic, value, key=client.encode()))
    await asyncio.gather(*deliveries)


async def wait_answered(tally: OverloadTally, answered: asyncio.Event, until: float) -> None:
    """Until every request of ``tally`` has its result (``answered`` is set by the
    reader then) or the clock passes ``until``."""
    if tally.pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), max(0.0, until - time.monotonic()))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    catalog = load_catalog(settings.topic_prefix)
    request_topic = catalog.name(Topic.INFERENCE_REQUESTS)
    reply_topic = catalog.name(Topic.INFERENCE_RESULTS)
    profiles = [profile_by_name(name) for name in args.models.split()]
    per_model = capacities(profiles, args.time_scale)
    total = sum(per_model.values())
    clients = [f"quickstart-client-{i}" for i in range(args.clients)]
    home = Path(os.environ.get("MULAMBDA_HOME") or REPO / ".mulambda")
    ages = worker_ages_s(home)
    load_before = os.getloadavg()

    warm, tally = OverloadTally(), OverloadTally()
    warm_done, done = asyncio.Event(), asyncio.Event()
    sending = {"measured": False}

    def on_result(payload: Any, now: float) -> None:
        if tally.result(payload, now):
            if sending["measured"] and not tally.pending:
                done.set()
        elif warm.result(payload, now) and not warm.pending:
            warm_done.set()

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=0
    )
    results = Results(settings.kafka_bootstrap_servers, reply_topic, on_result)
    await producer.start()
    try:
        await results.start()
        print(
            f"kafka {settings.kafka_bootstrap_servers}; models {args.models} at time scale "
            f"{args.time_scale}; worker ages "
            + ", ".join(f"{k} {'-' if v is None else f'{v:.0f} s'}" for k, v in ages.items())
            + f"; load average {load_before[0]:.2f}",
            flush=True,
        )
        if args.warmup_s > 0:
            await send_schedule(
                producer, args, rate=args.warmup_rate, duration_s=args.warmup_s,
                topic=request_topic, reply_topic=reply_topic, clients=clients,
                on_sent=warm.sent,
            )  # fmt: skip
            await wait_answered(warm, warm_done, time.monotonic() + args.deadline + 1)
            warmed = warm.figures(total)
            print(f"warm-up: {warmed.sent} sent, {warmed.ok} ok, {warmed.errors} errors")
        started = time.monotonic()
        sending["measured"] = True
        await send_schedule(
            producer, args, rate=args.rate, duration_s=args.duration, topic=request_topic,
            reply_topic=reply_topic, clients=clients, on_sent=tally.sent,
        )  # fmt: skip
        # Every request is answered by its deadline on a healthy platform; a little more
        # for the result to travel, then whatever is missing counts as unanswered.
        await wait_answered(tally, done, started + args.duration + args.deadline + args.margin)
    finally:
        await results.stop()
        await producer.stop()
    figures = tally.figures(total)
    load_after = os.getloadavg()
    print(render(figures, per_model))
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    target = figures.ok_share_of_capacity >= 0.8 and (
        figures.error_latency_p50_s is None or figures.error_latency_p50_s <= 1.0
    )
    print(f"target (ok >= 80 % of capacity, error median <= 1 s): {'met' if target else 'missed'}")
    return {
        "label": args.label,
        "config": {
            "rate": args.rate,
            "duration_s": args.duration,
            "clients": args.clients,
            "weights": [args.latency, args.accuracy],
            "deadline_s": args.deadline,
            "models": args.models.split(),
            "time_scale": args.time_scale,
            "warmup_s": args.warmup_s,
            "warmup_rate": args.warmup_rate,
            "body": args.body,
        },
        "capacity_per_model": per_model,
        "worker_ages_s": ages,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "figures": figures.to_json(),
        "target_met": target,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.8)
    parser.add_argument("--accuracy", type=float, default=0.2)
    parser.add_argument("--deadline", type=float, default=10.0)
    parser.add_argument("--margin", type=float, default=5.0,
                        help="seconds past the last deadline to wait for results")  # fmt: skip
    parser.add_argument("--body", type=json.loads, default={"instances": [0, 1]})
    parser.add_argument("--models", default=os.environ.get("MULAMBDA_SYNTHETIC_MODELS")
                        or "FastBad MidOK SlowGood")  # fmt: skip
    parser.add_argument("--time-scale", type=float,
                        default=float(os.environ.get("MULAMBDA_TIME_SCALE") or 0.2))  # fmt: skip
    parser.add_argument("--warmup-s", type=float, default=0.0)
    parser.add_argument("--warmup-rate", type=float, default=10.0)
    parser.add_argument("--label", default="quickstart-overload")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    document = asyncio.run(run(args))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
