"""Write throughput and load time of the selector's Redis/DragonflyDB view store.

Run: ``.venv/bin/python benchmarks/bench_store.py [--url URL] [--executors N]
[--clients C] [--batch B] [--loads L]``

Needs a running Redis or DragonflyDB (``--url``, default ``$MULAMBDA_REDIS_URL``). Writes
under a unique key prefix and deletes it at the end. Prints events/s of
``ViewStore.apply_batch`` for the initial fill (registrations, statuses, C probe latencies
per executor) and for steady-state heartbeats (statuses only), then the time of
``ViewStore.load`` with N executors (median and best of L). Target: load of 10,000
executors well under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence

from mulambda.selection.store import StoreEvent, ViewStore
from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    ModelState,
    Traits,
)


def _events(n: int, clients: int) -> tuple[list[StoreEvent], list[StoreEvent]]:
    fill: list[StoreEvent] = []
    beats: list[StoreEvent] = []
    for i in range(n):
        eid = f"bench-{i:06d}"
        fill.append(
            ExecutorRegistration(
                executor_id=eid,
                model_name=f"model-{i % 50}",
                model_version=1,
                traits=Traits(
                    model_type=f"type-{i % 10}", input_format="tensor", output_format="probs"
                ),
                accuracy=(i % 100) / 100,
                endpoint=f"http://10.0.{i // 250 % 256}.{i % 250}:8501",
                heartbeat_interval_s=30.0,
            )
        )
        status = ExecutorStatus(
            executor_id=eid,
            model_state=ModelState.AVAILABLE,
            in_flight=i % 7,
            heartbeat_interval_s=30.0,
        )
        fill.append(status)
        beats.append(status)
        fill.extend(
            LatencyMeasurement(executor_id=eid, client_id=f"client-{c}", latency_ms=1.0 + c)
            for c in range(clients)
        )
    return fill, beats


async def _apply(store: ViewStore, events: Sequence[StoreEvent], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        await store.apply_batch(events[start : start + batch], offsets={("bench", 0): start})
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("MULAMBDA_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--executors", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()

    fill, beats = _events(args.executors, args.clients)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    async with ViewStore(args.url, key_prefix=prefix) as store:
        try:
            fill_s = await _apply(store, fill, args.batch)
            beats_s = await _apply(store, beats, args.batch)
            load_times = []
            for _ in range(args.loads):
                started = time.perf_counter()
                snapshot = await store.load()
                load_times.append(time.perf_counter() - started)
                assert len(snapshot.executors) == args.executors, len(snapshot.executors)
        finally:
            await store.clear()
    print(f"store: {args.url} (batches of {args.batch} events)")
    print(
        f"apply_batch fill      : {len(fill):>7} events in {fill_s:6.3f} s = "
        f"{len(fill) / fill_s:>9,.0f} events/s  ({args.executors} registrations, "
        f"{args.executors} statuses, {args.executors * args.clients} probes)"
    )
    print(
        f"apply_batch heartbeats: {len(beats):>7} events in {beats_s:6.3f} s = "
        f"{len(beats) / beats_s:>9,.0f} events/s"
    )
    print(
        f"load {args.executors} executors: median {statistics.median(load_times) * 1000:.0f} ms, "
        f"best {min(load_times) * 1000:.0f} ms over {args.loads} loads"
    )


if __name__ == "__main__":
    asyncio.run(main())
