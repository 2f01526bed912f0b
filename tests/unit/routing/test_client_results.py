"""The SDK's pure decisions: error results, deadlines, bodies, the seen-id memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mulambda.errors import ConfigurationError, MulambdaError
from mulambda.routing.results import (
    Fate,
    InferenceFailed,
    ResultSieve,
    SeenIds,
    raise_for_result,
    request_body,
    seconds_until,
)
from mulambda.wire.events import InferenceResult, InferenceStatus


def _result(status: InferenceStatus, **fields: object) -> InferenceResult:
    return InferenceResult.model_validate(
        {"correlation_id": "c", "request_id": "r", "status": status, **fields}
    )


def test_an_ok_result_is_returned_as_is() -> None:
    ok = _result(InferenceStatus.OK, output={"predictions": [1]})
    assert raise_for_result(ok) is ok


def test_an_error_result_raises_inference_failed_with_reason_code_and_result() -> None:
    failed = _result(InferenceStatus.ERROR, error="every candidate failed\nmore", error_code=503)
    with pytest.raises(InferenceFailed) as caught:
        raise_for_result(failed)
    error = caught.value
    assert isinstance(error, MulambdaError)
    assert error.reason == "every candidate failed"
    assert error.error_code == 503
    assert error.request_id == "r"
    assert error.result is failed
    assert error.retriable


@pytest.mark.parametrize(
    ("code", "retriable"), [(None, False), (400, False), (404, False), (429, True), (504, True)]
)
def test_only_transient_executor_statuses_are_retriable(code: int | None, retriable: bool) -> None:
    error = InferenceFailed(_result(InferenceStatus.ERROR, error="x", error_code=code))
    assert error.retriable is retriable


def test_an_error_result_without_reason_still_has_one() -> None:
    assert InferenceFailed(_result(InferenceStatus.ERROR)).reason == (
        "inference failed without a reason"
    )


def test_deadlines_are_seconds_durations_or_aware_times() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert seconds_until(2.5) == 2.5
    assert seconds_until(timedelta(milliseconds=300)) == pytest.approx(0.3)
    assert seconds_until(now + timedelta(seconds=7), now=now) == 7.0


@pytest.mark.parametrize("deadline", [0, -1.0, timedelta(0)])
def test_a_deadline_not_in_the_future_is_refused(deadline: float | timedelta) -> None:
    with pytest.raises(ConfigurationError, match="future"):
        seconds_until(deadline)


def test_a_naive_deadline_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="UTC offset"):
        seconds_until(datetime(2030, 1, 1))  # the naive time under test


def test_body_inputs_or_instances_make_the_tf_serving_body() -> None:
    assert request_body({"examples": [1]}, None, None) == {"examples": [1]}
    assert request_body(None, {"x": [1]}, None) == {"inputs": {"x": [1]}}
    assert request_body(None, None, [0, 1]) == {"instances": [0, 1]}


@pytest.mark.parametrize(
    ("body", "inputs", "instances"), [(None, None, None), ({"inputs": 1}, [1], None)]
)
def test_exactly_one_body_form_is_required(
    body: dict[str, object] | None, inputs: object, instances: object
) -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        request_body(body, inputs, instances)


def test_seen_ids_tell_first_copies_from_duplicates() -> None:
    seen = SeenIds(3)
    assert seen.first_time("a")
    assert not seen.first_time("a")
    assert seen.first_time("b")
    assert "a" in seen
    assert len(seen) == 2


def test_seen_ids_forget_the_oldest_beyond_capacity() -> None:
    seen = SeenIds(2)
    for key in ("a", "b", "c"):
        seen.add(key)
    assert "a" not in seen
    assert "b" in seen
    assert "c" in seen
    seen.add("b")  # seen again: now the newest, so "c" goes first
    seen.add("d")
    assert "c" not in seen
    assert "b" in seen


def test_seen_ids_need_room_for_one() -> None:
    with pytest.raises(ConfigurationError):
        SeenIds(0)


def _for(request_id: str | None) -> InferenceResult:
    return InferenceResult(correlation_id="c", request_id=request_id, status=InferenceStatus.OK)


def test_the_sieve_delivers_each_unawaited_result_once() -> None:
    sieve = ResultSieve(10)
    assert sieve.judge(_for("a")) is Fate.DELIVER
    assert sieve.judge(_for("a")) is Fate.DUPLICATE
    assert sieve.judge(_for("b")) is Fate.DELIVER


def test_copies_of_results_an_infer_call_awaited_are_duplicates() -> None:
    sieve = ResultSieve(10)
    sieve.awaiting("a")  # its first copy went to the call, not through the sieve
    assert sieve.judge(_for("a")) is Fate.DUPLICATE


def test_results_of_timed_out_calls_are_late() -> None:
    sieve = ResultSieve(10)
    sieve.awaiting("a")
    sieve.abandoned("a")
    assert sieve.judge(_for("a")) is Fate.LATE
    assert sieve.judge(_for("a")) is Fate.LATE


def test_results_without_request_id_cannot_be_deduplicated() -> None:
    sieve = ResultSieve(10)
    assert sieve.judge(_for(None)) is Fate.DELIVER
    assert sieve.judge(_for(None)) is Fate.DELIVER


def test_the_sieve_forgets_beyond_its_memory() -> None:
    sieve = ResultSieve(2)
    for key in ("a", "b", "c"):
        assert sieve.judge(_for(key)) is Fate.DELIVER
    assert sieve.judge(_for("a")) is Fate.DELIVER  # forgotten: more than 2 newer ids
    assert sieve.judge(_for("c")) is Fate.DUPLICATE


@pytest.mark.parametrize(
    ("given", "where"),
    [
        ({"instances": [[1.0, float("nan")]]}, r"instances\[0\]\[1\] = nan"),
        ({"inputs": {"x": [float("-inf")]}}, r"inputs.x\[0\] = -inf"),
    ],
)
def test_a_body_with_non_finite_numbers_is_refused_not_sent_as_null(
    given: dict[str, object], where: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"non-finite number.*{where}"):
        request_body(given, None, None)
    assert request_body({"instances": [[1.0, None]]}, None, None) == {"instances": [[1.0, None]]}
