"""The fault harness checked without a platform: a scripted responder, known figures.

The load generator publishes real requests; a responder written here answers them the
way a faulty platform might (not at all, twice, once plus a copy in an aborted
transaction, with an error, naming the request by ``request_id``); the readers and the
ledger must report exactly what it did. This is what makes a fault-suite failure the
platform's and not the harness's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from mulambda.harness.load import LoadGenerator, LoadSpec
from mulambda.harness.readers import TopicReader
from mulambda.harness.verify import COMMITTED, UNCOMMITTED, Ledger
from mulambda.wire.catalog import Catalog, Topic
from tests.conftest import Infra

COUNT = 50


def _result(request: Mapping[str, Any], status: str = "ok", **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "message_id": uuid.uuid4().hex,
            "timestamp": "2026-01-01T00:00:00Z",
            "correlation_id": request["correlation_id"],
            "status": status,
            **extra,
        }
    )


async def test_the_ledger_reports_exactly_what_a_scripted_responder_did(
    infra: Infra, catalog: Catalog
) -> None:
    requests = catalog.name(Topic.INFERENCE_REQUESTS)
    results = catalog.name(Topic.INFERENCE_RESULTS)
    bootstrap = infra.kafka_bootstrap
    ledger = Ledger()
    inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
    committed = TopicReader(
        bootstrap,
        results,
        lambda p, t: ledger.record_result(COMMITTED, p, t),
        isolation_level="read_committed",
    )
    uncommitted = TopicReader(
        bootstrap,
        results,
        lambda p, t: ledger.record_result(UNCOMMITTED, p, t),
        isolation_level="read_uncommitted",
    )
    copies = TopicReader(bootstrap, requests, lambda p, _t: ledger.record_request_copy(p))
    intake = TopicReader(bootstrap, requests, lambda p, _t: inbox.put_nowait(p))
    generator = LoadGenerator(
        bootstrap,
        LoadSpec(rate=100.0, duration_s=COUNT / 100.0, arrivals="fixed", deadline_s=5.0),
        request_topic=requests,
        reply_topic=results,
        partitions=catalog.spec(Topic.INFERENCE_REQUESTS).partitions,
        on_sent=ledger.record_sent,
    )
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    aborted = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"bench-test-{uuid.uuid4().hex[:8]}"
    )

    async def respond() -> None:
        for i in range(COUNT):
            request = await asyncio.wait_for(inbox.get(), 30)
            key = request["correlation_id"].encode()
            match i % 10:
                case 0:
                    continue  # never answered: lost
                case 1:  # answered twice: a duplicate in both views
                    await plain.send_and_wait(results, _result(request), key=key)
                    await plain.send_and_wait(results, _result(request), key=key)
                case 2:  # once, plus a copy in an aborted transaction
                    await plain.send_and_wait(results, _result(request), key=key)
                    await aborted.begin_transaction()
                    await aborted.send_and_wait(results, _result(request), key=key)
                    await aborted.abort_transaction()
                case 3:
                    error = _result(request, "error", error="scripted failure after 12ms")
                    await plain.send_and_wait(results, error, key=key)
                case 4:  # named by request_id, as a future result schema may do
                    named = _result(request, request_id=request["message_id"])
                    await plain.send_and_wait(results, named, key=key)
                case _:
                    await plain.send_and_wait(results, _result(request), key=key)

    async with committed, uncommitted, copies, intake, generator:
        await plain.start()
        await aborted.start()
        try:
            responder = asyncio.create_task(respond())
            summary = await generator.run()
            await asyncio.wait_for(responder, 60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                committed.records < COUNT or uncommitted.records < COUNT + COUNT // 10
            ):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # nothing more should come
        finally:
            await plain.stop()
            await aborted.stop()

    assert (summary.scheduled, summary.acked, summary.failed) == (COUNT, COUNT, 0)
    figures = ledger.figures(margin_s=1.0, premature_left_s=2.0)
    assert figures.sent == COUNT
    assert figures.send_failed == 0
    assert figures.lost == COUNT // 10
    assert figures.late == 0
    assert figures.errors == COUNT // 10
    assert figures.ok == COUNT - 2 * (COUNT // 10)
    assert figures.answered == figures.ok + figures.errors
    assert figures.duplicate_ids == {COMMITTED: COUNT // 10, UNCOMMITTED: 2 * (COUNT // 10)}
    assert figures.extra_results == {COMMITTED: COUNT // 10, UNCOMMITTED: 2 * (COUNT // 10)}
    assert figures.duplicates == COUNT // 10
    assert figures.request_copies == 0
    assert figures.foreign_results == 0
    assert figures.premature_errors == COUNT // 10
    assert figures.errors_by_reason == {"scripted failure after N": COUNT // 10}
    assert ledger.unanswered() == COUNT // 10
    assert figures.latency_p50_ms is not None
    assert figures.latency_p50_ms > 0
