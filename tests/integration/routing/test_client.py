"""The producer SDK against the real broker, answered by the in-test responder (no fakes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

import mulambda
from mulambda.errors import ConfigurationError, RequestTimeout
from mulambda.kafka import Producer
from mulambda.routing.client import Client, ClientClosed
from mulambda.routing.results import InferenceFailed
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceResult, InferenceStatus
from tests.conftest import Infra
from tests.integration.routing.client_responder import FAILURE, Responder

pytestmark = pytest.mark.integration

TRAITS = {"model_type": "sdk", "input_format": "feature", "output_format": "confidence"}


def _marker() -> str:
    return f"sdk-{uuid.uuid4().hex[:8]}"


def _client(infra: Infra, cat: Catalog, client_id: str) -> Client:
    return Client(infra.kafka(client_id), catalog=cat)


async def _next(results: AsyncIterator[InferenceResult], timeout_s: float) -> InferenceResult:
    return await asyncio.wait_for(anext(results), timeout_s)


async def test_a_thousand_concurrent_calls_on_one_client_each_get_their_own_result(
    infra: Infra, cat: Catalog
) -> None:
    marker = _marker()
    n = 1000
    async with (
        Responder(infra.kafka("responder"), cat, marker),
        _client(infra, cat, f"{marker}-app") as client,
    ):
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.infer(traits=TRAITS, instances=[i], deadline=60) for i in range(n))
        )
        elapsed = time.monotonic() - started
        assert [r.output for r in results] == [{"echo": {"instances": [i]}} for i in range(n)]
        assert all(r.status is InferenceStatus.OK for r in results)
        assert len({r.request_id for r in results}) == n
        assert client.in_flight == 0
        assert client.requester_stats.replied == n
        assert client.requester_stats.timeouts == 0
        assert elapsed < 60


async def test_a_thousand_submissions_are_yielded_by_results_once_each(
    infra: Infra, cat: Catalog
) -> None:
    marker = _marker()
    n = 1000
    async with (
        Responder(infra.kafka("responder"), cat, marker),
        _client(infra, cat, f"{marker}-app") as client,
    ):
        results = client.results()
        submitted = await asyncio.gather(
            *(client.submit(traits=TRAITS, instances=[i], deadline=60) for i in range(n))
        )
        assert len(set(submitted)) == n
        assert client.stats.submitted == n
        yielded = [await _next(results, 60) for _ in range(n)]
        assert {r.request_id for r in yielded} == set(submitted)
        by_id = {r.request_id: r for r in yielded}
        for i, request_id in enumerate(submitted):
            assert by_id[request_id].output == {"echo": {"instances": [i]}}


async def test_a_consumer_elsewhere_reads_the_results_of_a_pinned_partition(
    infra: Infra, cat: Catalog
) -> None:
    # One process submits, another (here: another client) consumes: both pin partition 5.
    marker = _marker()
    async with (
        Responder(infra.kafka("responder"), cat, marker),
        Client(infra.kafka(f"{marker}-consumer"), catalog=cat, reply_partition=5) as consumer,
        Client(infra.kafka(f"{marker}-producer"), catalog=cat, reply_partition=5) as producer,
    ):
        request_id = await producer.submit(traits=TRAITS, instances=[9], deadline=30)
        result = await _next(consumer.results(), 30)
        assert result.request_id == request_id
        assert result.output == {"echo": {"instances": [9]}}


async def test_error_results_raise_inference_failed_with_reason_and_code(
    infra: Infra, cat: Catalog
) -> None:
    marker = _marker()
    async with (
        Responder(infra.kafka("responder"), cat, marker),
        _client(infra, cat, f"{marker}-app") as client,
    ):
        with pytest.raises(InferenceFailed) as failed:
            await client.infer(traits=TRAITS, inputs=[1], policy="fail", deadline=30)
        assert failed.value.reason == FAILURE
        assert failed.value.error_code == 503
        assert failed.value.retriable
        assert failed.value.result.status is InferenceStatus.ERROR
        assert isinstance(failed.value, mulambda.MulambdaError)
        # The client goes on serving calls after an error result.
        ok = await client.infer(traits=TRAITS, inputs=[2], deadline=30)
        assert ok.output == {"echo": {"inputs": [2]}}


async def test_no_result_by_the_deadline_raises_request_timeout(infra: Infra, cat: Catalog) -> None:
    marker = _marker()
    async with (
        Responder(infra.kafka("responder"), cat, marker) as responder,
        _client(infra, cat, f"{marker}-app") as client,
    ):
        # Warm up so the responder's group owns its partitions before the timed call.
        await client.infer(traits=TRAITS, instances=[0], deadline=30)
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.infer(traits=TRAITS, instances=[1], policy="ignore", deadline=1.0)
        assert 0.9 < time.monotonic() - started < 3.0
        assert responder.seen == 2
        assert client.requester_stats.timeouts == 1
        assert client.in_flight == 0
        # A result that comes after the deadline is dropped: not returned, not yielded.
        with pytest.raises(RequestTimeout):
            await client.infer(traits=TRAITS, instances=[2], policy="slow:1.5", deadline=0.5)
        results = client.results()
        await asyncio.sleep(2.0)
        ok = await client.infer(traits=TRAITS, instances=[3], deadline=30)
        assert ok.output == {"echo": {"instances": [3]}}
        submitted = await client.submit(traits=TRAITS, instances=[4], deadline=30)
        first = await _next(results, 30)
        assert first.request_id == submitted  # not the late result of instances=[2]
        assert client.stats.late == 1
        assert client.stats.duplicates == 0


async def test_a_duplicated_result_is_returned_and_yielded_once(infra: Infra, cat: Catalog) -> None:
    marker = _marker()
    async with (
        Responder(infra.kafka("responder"), cat, marker),
        _client(infra, cat, f"{marker}-app") as client,
        Producer(infra.kafka("duplicator")) as producer,
    ):
        results = client.results()
        # infer(): the responder answers twice; the call returns once, the copy is dropped.
        ok = await client.infer(traits=TRAITS, instances=[1], policy="twice", deadline=30)
        assert ok.output == {"echo": {"instances": [1]}}
        # submit(): the responder answers twice; results() yields it once.
        request_id = await client.submit(traits=TRAITS, instances=[2], policy="twice", deadline=30)
        yielded = await _next(results, 30)
        assert yielded.request_id == request_id
        assert yielded.output == {"echo": {"instances": [2]}}
        # The same result published twice straight onto the client's reply partition.
        result = InferenceResult(
            correlation_id="dup-c",
            request_id=f"{marker}-dup",
            status=InferenceStatus.OK,
            output={"n": 1},
        )
        topic = cat.name(Topic.INFERENCE_RESULTS)
        for _ in range(2):
            await producer.send_and_wait(
                topic, result, key="dup-c", partition=client.reply_partition
            )
        marker_result = InferenceResult(
            correlation_id="end-c", request_id=f"{marker}-end", status=InferenceStatus.OK
        )
        await producer.send_and_wait(
            topic, marker_result, key="end-c", partition=client.reply_partition
        )
        assert (await _next(results, 30)).request_id == f"{marker}-dup"
        assert (await _next(results, 30)).request_id == f"{marker}-end"
        assert client.stats.duplicates == 3  # infer's copy, submit's copy, the direct one


async def test_results_can_be_limited_to_this_clients_submissions(
    infra: Infra, cat: Catalog
) -> None:
    marker = _marker()
    async with (
        Responder(infra.kafka("responder"), cat, marker),
        _client(infra, cat, f"{marker}-app") as client,
        Producer(infra.kafka("stranger")) as producer,
    ):
        stranger = InferenceResult(
            correlation_id="x", request_id=f"{marker}-x", status=InferenceStatus.OK
        )
        await producer.send_and_wait(
            cat.name(Topic.INFERENCE_RESULTS), stranger, partition=client.reply_partition
        )
        request_id = await client.submit(traits=TRAITS, instances=[7], deadline=30)
        mine = await _next(client.results(only_submitted=True), 30)
        assert mine.request_id == request_id


async def test_stop_ends_results_and_fails_waiting_calls(infra: Infra, cat: Catalog) -> None:
    marker = _marker()
    async with Responder(infra.kafka("responder"), cat, marker):
        client = _client(infra, cat, f"{marker}-app")
        await client.start()
        results = client.results()
        pending = asyncio.create_task(
            client.infer(traits=TRAITS, instances=[1], policy="ignore", deadline=30)
        )
        reader = asyncio.create_task(anext(results, None))
        await asyncio.sleep(0.5)
        await client.stop()
        await client.stop()  # idempotent
        with pytest.raises(ClientClosed):
            await asyncio.wait_for(pending, 5)
        assert await asyncio.wait_for(reader, 5) is None
        with pytest.raises(ClientClosed):
            await client.infer(traits=TRAITS, instances=[1])


async def test_invalid_arguments_raise_configuration_error(infra: Infra, cat: Catalog) -> None:
    async with _client(infra, cat, f"{_marker()}-app") as client:
        with pytest.raises(ConfigurationError, match="traits"):
            await client.infer(traits={"model_type": "x"}, instances=[1])
        with pytest.raises(ConfigurationError, match="exactly one"):
            await client.infer(traits=TRAITS, instances=[1], inputs=[1])
        with pytest.raises(ConfigurationError, match="future"):
            await client.infer(traits=TRAITS, instances=[1], deadline=-1)


def test_sync_client_runs_calls_from_plain_code(infra: Infra, cat: Catalog) -> None:
    marker = _marker()

    async def serve(stop: asyncio.Event) -> None:
        async with Responder(infra.kafka("responder"), cat, marker):
            await stop.wait()

    # The responder runs on a loop of its own thread; the test body stays synchronous.
    import threading

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(stop),))
    thread.start()
    try:
        with mulambda.SyncClient(infra.kafka(f"{marker}-app"), catalog=cat) as client:
            ok = client.infer(traits=TRAITS, instances=[5], deadline=30)
            assert ok.output == {"echo": {"instances": [5]}}
            with pytest.raises(InferenceFailed):
                client.infer(traits=TRAITS, instances=[5], policy="fail", deadline=30)
            assert client.submit(traits=TRAITS, instances=[6], deadline=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
