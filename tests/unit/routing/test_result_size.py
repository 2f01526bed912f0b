"""fit_result: a result Kafka can carry is kept, a larger one becomes an error saying so."""

from __future__ import annotations

import pytest

from mulambda.routing.result_size import MAX_RESULT_BYTES, fit_result
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, encode
from mulambda.wire.events import InferenceResult, InferenceStatus

pytestmark = pytest.mark.unit


def _result(output_bytes: int) -> InferenceResult:
    return InferenceResult(
        correlation_id="corr-1",
        request_id="req-1",
        status=InferenceStatus.OK,
        executor_id="ex-1",
        model_name="m",
        output={"predictions": ["x" * output_bytes]},
        attempts=2,
        latency_ms=12.5,
        selection="cached",
    )


def test_a_result_that_fits_is_returned_as_is() -> None:
    result = _result(100)
    assert fit_result(result, 10_000) is result


def test_a_result_exactly_at_the_limit_fits() -> None:
    result = _result(1000)
    size = len(encode(result))
    assert fit_result(result, size) is result
    assert fit_result(result, size - 1) is not result


def test_a_result_over_the_limit_becomes_an_error_naming_size_and_limit() -> None:
    result = _result(5000)
    size = len(encode(result))
    fitted = fit_result(result, 4096)
    assert fitted.status is InferenceStatus.ERROR
    assert fitted.error == (
        f"result of {size} bytes exceeds the 4096-byte limit of a Kafka record (output of ex-1)"
    )
    assert fitted.output is None
    assert fitted.error_code is None
    # What identifies the answer and how it came about is kept.
    kept = ("correlation_id", "request_id", "executor_id", "model_name", "attempts")
    assert {f: getattr(fitted, f) for f in kept} == {f: getattr(result, f) for f in kept}
    assert (fitted.latency_ms, fitted.selection) == (12.5, "cached")
    assert len(encode(fitted)) <= 4096


def test_the_default_limit_leaves_room_for_key_headers_and_framing() -> None:
    assert MAX_RESULT_BYTES < DEFAULT_MAX_RECORD_BYTES
    too_big = _result(MAX_RESULT_BYTES)
    assert fit_result(too_big).status is InferenceStatus.ERROR
    assert fit_result(_result(MAX_RESULT_BYTES - 1000)).status is InferenceStatus.OK
