"""The router end to end: real Kafka and Redis, an in-process selector, synthetic executors.

Every test registers its executors under traits of its own, so the module's selector and
router are shared without the tests seeing each other's executors. Routers of this module
share one consumer group, so each one resumes where the previous one committed. How the
router rides out failures (a dead executor process, a missing selector, bad reply
addresses, oversized results) is in ``test_router_resilience.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import SyntheticProfile
from mulambda.kafka import Producer, Record, read_until_key, replay
from mulambda.protocols.tfserving import ExecutorInternalError, ExecutorUnavailable, TFServingError
from mulambda.routing.answered import AnsweredRequests
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import (
    DeadLetter,
    InferenceResult,
    InferenceStatus,
    ObservedLatencies,
    Slo,
    deadline_in,
    utcnow,
)
from tests.conftest import Infra
from tests.integration.routing.support import (
    CLIENT,
    FAST,
    TIME_SCALE,
    closed_port,
    infer,
    infer_cli,
    inference_request,
    new_traits,
    register,
    uid,
    until,
)

pytestmark = pytest.mark.integration


def _failovers(router: Router) -> float:
    value = router.registry.get_sample_value("mulambda_router_failovers_total")
    return value or 0.0


class _Failing(SyntheticModel):
    """A model whose predictions fail with a fixed TF Serving error (503, 500, ...)."""

    def __init__(self, error: type[TFServingError]) -> None:
        super().__init__(FAST, time_scale=TIME_SCALE)
        self._error_type = error

    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        raise self._error_type("injected failure")


# --- fixtures ------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def broken() -> AsyncIterator[ExecutorServer]:
    """Models answering 503 and 500 to every prediction."""
    models = {"Busy": _Failing(ExecutorUnavailable), "Crashing": _Failing(ExecutorInternalError)}
    async with ExecutorServer("127.0.0.1", 0, models) as server:
        assert await server.wait_loaded(5)
        yield server


# --- tests ---------------------------------------------------------------------------


async def test_request_is_answered_by_the_selected_executor(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    executor_id = await register(producer, cat, selector, traits, fast.url)
    request = inference_request(
        cat, traits, body={"instances": [0, 1, {"feature": 2, "data": [1, 2]}]}
    )
    result = await infer(infra, cat, producer, request)
    assert result.status is InferenceStatus.OK, result.error
    assert result.correlation_id == request.correlation_id
    assert result.executor_id == executor_id
    assert result.model_name == FAST.name
    assert result.attempts == 1
    assert result.latency_ms is not None
    assert result.latency_ms > 0
    assert result.output == {
        "predictions": [{"confidence": FAST.confidence(f), "model": FAST.name} for f in (0, 1, 2)]
    }


async def test_observed_calls_are_published_with_input_size(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    executor_id = await register(producer, cat, selector, traits, fast.url)
    async with read_until_key(
        infra.kafka(), cat.name(Topic.OBSERVED_LATENCIES), executor_id, ObservedLatencies
    ) as batches:
        result = await infer(
            infra, cat, producer, inference_request(cat, traits, body={"instances": [0, 0, 0, 0]})
        )
        assert result.status is InferenceStatus.OK, result.error
        batch = await batches.result(10)
    assert batch.router_id == router.router_id
    assert batch.released == 0
    (sample,) = batch.samples  # the first call after a quiet spell leaves at once, alone
    assert sample.client_id == CLIENT
    assert sample.input_size == 4  # rows of the body
    assert not sample.failed
    assert result.latency_ms is not None
    assert 0 < sample.latency_ms <= result.latency_ms  # the call is part of the route
    assert result.call_ms == sample.latency_ms  # the result reports the same call
    # The selector learns from it: a service time for this executor appears.
    entry = selector.view.get(executor_id)
    assert entry is not None
    await until(lambda: entry.service_samples > 0, "the selector to learn a service time")


@pytest.mark.parametrize("failure", ["connection-refused", "503", "500"])
async def test_failover_to_the_next_candidate(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    broken: ExecutorServer,
    router: Router,
    failure: str,
) -> None:
    traits = new_traits()
    if failure == "connection-refused":
        endpoint, model = f"http://127.0.0.1:{closed_port()}", FAST.name
    else:
        endpoint, model = broken.url, {"503": "Busy", "500": "Crashing"}[failure]
    # The broken one ranks first: the request weighs accuracy only.
    bad = await register(producer, cat, selector, traits, endpoint, model=model, accuracy=0.99)
    good = await register(producer, cat, selector, traits, fast.url, accuracy=0.5)
    errors_before = dict(broken.stats()["errors_by_status"])
    failovers_before = _failovers(router)
    result = await infer(infra, cat, producer, inference_request(cat, traits))
    assert result.status is InferenceStatus.OK, result.error
    assert result.executor_id == good != bad
    assert result.attempts == 2
    assert _failovers(router) == failovers_before + 1
    if failure != "connection-refused":  # the broken executor really was called first
        errors = broken.stats()["errors_by_status"]
        assert errors[failure] == errors_before.get(failure, 0) + 1


async def test_client_error_is_not_retried(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    for accuracy in (0.9, 0.8):  # two candidates that would both answer valid requests
        await register(producer, cat, selector, traits, fast.url, accuracy=accuracy)
    calls_before = fast.requests
    request = inference_request(cat, traits, body={"instances": ["not-a-feature"]})
    result = await infer(infra, cat, producer, request)
    assert result.status is InferenceStatus.ERROR
    assert result.error_code == 400
    assert result.attempts == 1
    assert result.error is not None
    assert "int64" in result.error
    assert fast.requests == calls_before + 1  # the second candidate was never called


async def test_no_candidate_names_the_criterion(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    nobody = await infer(infra, cat, producer, inference_request(cat, new_traits()))
    assert nobody.status is InferenceStatus.ERROR
    assert nobody.attempts == 0
    assert nobody.error is not None
    assert "eliminated by traits" in nobody.error

    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url, accuracy=0.5)
    strict = inference_request(cat, traits, policy="adaptive", slo=Slo(min_accuracy=0.9))
    too_good = await infer(infra, cat, producer, strict)
    assert too_good.status is InferenceStatus.ERROR
    assert too_good.error is not None
    assert "slo.min_accuracy" in too_good.error


async def test_expired_deadline_gets_an_error_without_calling_an_executor(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url)
    calls_before = fast.requests
    request = inference_request(cat, traits, deadline=utcnow() - timedelta(seconds=1))
    result = await infer(infra, cat, producer, request)
    assert result.status is InferenceStatus.ERROR
    assert result.error is not None
    assert "deadline" in result.error
    assert result.attempts == 0
    assert fast.requests == calls_before


async def test_undecodable_request_is_dead_lettered(
    infra: Infra, cat: Catalog, producer: Producer, router: Router, router_group: str
) -> None:
    key = uid("garbage")
    garbage = b"\xff{ this is not json"
    async with read_until_key(
        infra.kafka(), cat.name(Topic.DEAD_LETTERS), key, DeadLetter
    ) as letters:
        await (await producer.send_raw(cat.name(Topic.INFERENCE_REQUESTS), garbage, key=key))
        letter = await letters.result(15)
    assert letter.topic == cat.name(Topic.INFERENCE_REQUESTS)
    assert letter.original_value == garbage
    assert letter.consumer_group == router_group
    assert "not valid JSON" in letter.reason


async def test_invalid_request_with_a_reply_address_gets_an_error_result(
    infra: Infra, cat: Catalog, producer: Producer, router: Router
) -> None:
    correlation = uuid.uuid4().hex
    invalid = {  # no traits, no body: but the client can be told so
        "reply_topic": cat.name(Topic.INFERENCE_RESULTS),
        "correlation_id": correlation,
        "deadline": deadline_in(30).isoformat(),
        "client_id": CLIENT,
    }
    async with read_until_key(
        infra.kafka(), cat.name(Topic.INFERENCE_RESULTS), correlation, InferenceResult
    ) as waiter:
        await (
            await producer.send_raw(
                cat.name(Topic.INFERENCE_REQUESTS), orjson.dumps(invalid), key=CLIENT
            )
        )
        result = await waiter.result(15)
    assert result.status is InferenceStatus.ERROR
    assert result.error is not None
    assert "traits" in result.error
    assert "body" in result.error
    assert result.attempts == 0


@pytest_asyncio.fixture(loop_scope="session")
async def slow() -> AsyncIterator[ExecutorServer]:
    """A model answering after 1.5 s, long enough to act while a request is in flight."""
    profile = SyntheticProfile(
        name="Slow", D=1500, alpha=0, beta=0, J=0, confidences=(0.7,), gamma=0
    )
    async with ExecutorServer("127.0.0.1", 0, {"Slow": SyntheticModel(profile, seed=2)}) as server:
        assert await server.wait_loaded(5)
        yield server


async def test_a_slow_request_does_not_hold_up_later_ones(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    slow: ExecutorServer,
    router: Router,
) -> None:
    slow_traits, fast_traits = new_traits(), new_traits()
    await register(producer, cat, selector, slow_traits, slow.url, model="Slow")
    await register(producer, cat, selector, fast_traits, fast.url)
    slow_request = inference_request(cat, slow_traits)
    async with read_until_key(
        infra.kafka(), slow_request.reply_topic, slow_request.correlation_id, InferenceResult
    ) as slow_waiter:
        await producer.send_and_wait(cat.name(Topic.INFERENCE_REQUESTS), slow_request, key=CLIENT)
        await until(lambda: slow.in_flight == 1, "the slow call to start")
        quick = await infer(infra, cat, producer, inference_request(cat, fast_traits))
        assert quick.status is InferenceStatus.OK, quick.error
        assert slow.in_flight == 1  # answered while the slow one is still being served
        slow_result = await slow_waiter.result(10)
    assert slow_result.status is InferenceStatus.OK, slow_result.error


async def test_stop_finishes_requests_in_flight(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    slow: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, slow.url, model="Slow")
    request = inference_request(cat, traits)
    async with read_until_key(
        infra.kafka(), request.reply_topic, request.correlation_id, InferenceResult
    ) as waiter:
        await producer.send_and_wait(cat.name(Topic.INFERENCE_REQUESTS), request, key=CLIENT)
        await until(lambda: slow.in_flight == 1, "the slow call to start")
        await router.stop()  # as the runner does on SIGTERM
        assert not router.ready
        result = await waiter.result(10)
    assert result.status is InferenceStatus.OK, result.error
    assert result.output == {"predictions": [{"confidence": 0.7, "model": "Slow"}]}


async def test_router_command_finishes_in_flight_requests_on_sigterm(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    slow: ExecutorServer,
    router_group: str,
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, slow.url, model="Slow")
    request = inference_request(cat, traits)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mulambda.cli",
        "router",
        "--router-id",
        uid("cli-router"),
        "--group-id",
        router_group,  # resumes after the in-process routers' requests
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **infra.env(), "MULAMBDA_TOPIC_PREFIX": cat.prefix},
    )
    try:
        async with read_until_key(
            infra.kafka(), request.reply_topic, request.correlation_id, InferenceResult
        ) as waiter:
            await producer.send_and_wait(cat.name(Topic.INFERENCE_REQUESTS), request, key=CLIENT)
            await until(lambda: slow.in_flight == 1, "the router process to call", timeout_s=30)
            process.send_signal(signal.SIGTERM)
            result = await waiter.result(10)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert result.status is InferenceStatus.OK, result.error
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Unclosed" not in stderr  # stopped cleanly, not torn down by cancellation


async def test_infer_cli_prints_the_result(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    executor_id = await register(producer, cat, selector, traits, fast.url)

    def args(model_type: str) -> list[str]:
        return [
            "--client-id",
            CLIENT,
            "--model-type",
            model_type,
            "--input-format",
            traits.input_format,
            "--output-format",
            traits.output_format,
            "--body",
            '{"instances": [1]}',
            "--timeout",
            "20",
        ]

    (code, out, err), (bad_code, bad_out, _) = await asyncio.gather(
        infer_cli(infra, cat, *args(traits.model_type)),
        infer_cli(infra, cat, *args(uid("unknown-kind"))),
    )
    assert code == 0, err
    result = InferenceResult.model_validate_json(out)
    assert result.status is InferenceStatus.OK
    assert result.executor_id == executor_id
    assert result.output == {
        "predictions": [{"confidence": FAST.confidence(1), "model": FAST.name}]
    }
    assert bad_code == 1
    failed = InferenceResult.model_validate_json(bad_out)
    assert failed.status is InferenceStatus.ERROR
    assert failed.error is not None
    assert "eliminated by traits" in failed.error


async def test_a_redelivered_request_is_answered_once(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
) -> None:
    # The same record twice (as Kafka redelivers after a crash): one result, one call.
    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url)
    prefix = f"{uid('answered')}:"
    worker = Router(
        infra.kafka("router-test-answered"),
        cat,
        router_id=uid("router"),
        group_id=uid("router-group"),
        answered=AnsweredRequests(infra.redis_url, key_prefix=prefix),
    )
    request = inference_request(cat, traits)
    async with worker:
        first = await infer(infra, cat, producer, request)
        assert first.status is InferenceStatus.OK, first.error
        assert first.request_id == request.message_id
        # A redelivery comes after the router marked the request answered (a crash or a
        # rebalance later); the mark follows the result's acknowledgement closely.
        marks = AnsweredRequests(infra.redis_url, key_prefix=prefix)
        async with marks:
            for _ in range(100):
                if await marks.seen(request.message_id):
                    break
                await asyncio.sleep(0.05)
            assert await marks.seen(request.message_id)
        await producer.send_and_wait(
            cat.name(Topic.INFERENCE_REQUESTS), request, key=request.client_id
        )
        await until(
            lambda: (
                worker.registry.get_sample_value(
                    "mulambda_router_requests_total", {"status": "redelivered"}
                )
                == 1
            ),
            "the redelivery skipped",
        )
    results: list[InferenceResult] = []

    def collect(record: Record[Any]) -> None:
        value = record.value
        if isinstance(value, InferenceResult) and value.correlation_id == request.correlation_id:
            results.append(value)

    await replay(infra.kafka(), {request.reply_topic: InferenceResult}, collect)
    assert [r.request_id for r in results] == [request.message_id]
