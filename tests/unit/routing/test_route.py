"""The route decision: selection reply and call outcomes in, steps and the result out.

No servers and no sleeping: outcomes are reported by hand and time is a fixed clock
moved by the tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mulambda.errors import ConfigurationError, MulambdaError, RequestTimeout
from mulambda.executors.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorInternalError,
    ExecutorUnavailable,
    Unimplemented,
)
from mulambda.routing.route import (
    Call,
    Finished,
    Route,
    Select,
    Step,
    error_result,
    input_size_of,
)
from mulambda.wire.events import (
    Candidate,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    SelectionReply,
    SelectionStatus,
)
from tests.factories import TRAITS

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SELECTION_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 30.0


class Clock:
    """A clock that stands still until a test moves it."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def _request(deadline_s: float = 10.0, **fields: Any) -> InferenceRequest:
    values: dict[str, Any] = {
        "correlation_id": "corr-1",
        "reply_topic": "t.results",
        "deadline": T0 + timedelta(seconds=deadline_s),
        "client_id": "cl-1",
        "traits": TRAITS,
        "body": {"instances": [[0.1], [0.2], [0.3]]},
    }
    values.update(fields)
    return InferenceRequest(**values)


def _candidate(executor_id: str, *, version: int | None = None) -> Candidate:
    return Candidate(
        executor_id=executor_id,
        endpoint=f"http://{executor_id}:8501",
        model_name=f"model-{executor_id}",
        model_version=version,
        score=1.0,
        accuracy=0.9,
    )


def _reply(*executor_ids: str) -> SelectionReply:
    return SelectionReply(
        correlation_id="corr-1",
        status=SelectionStatus.OK,
        candidates=[_candidate(e) for e in executor_ids],
    )


def _route(request: InferenceRequest | None = None, clock: Clock | None = None) -> Route:
    return Route(
        request or _request(),
        selection_timeout_s=SELECTION_TIMEOUT_S,
        call_timeout_s=CALL_TIMEOUT_S,
        now=(clock or Clock()).now,
    )


def _call(step: Step) -> Call:
    assert isinstance(step, Call), step
    return step


def _result(step: Step) -> InferenceResult:
    assert isinstance(step, Finished), step
    return step.result


def _selected(route: Route, reply: SelectionReply) -> Step:
    assert isinstance(route.step, Select)
    route.selected(reply)
    return route.step


# --- input size and error results ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"instances": [1, 2, 3]}, 3),
        ({"instances": []}, 0),
        ({"examples": [{"x": 1}, {"x": 2}]}, 2),
        ({"inputs": {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]}}, 4),  # columnar: rows of a
        ({"inputs": {"a": 7}}, 1),  # one scalar input
        ({"inputs": {}}, 1),
        ({"inputs": [[1], [2]]}, 2),
        ({"inputs": 5}, 1),
        ({"instances": "not-a-list", "inputs": [1, 2]}, 2),  # instances must be a list
    ],
)
def test_input_size_counts_rows_of_the_body(body: dict[str, Any], expected: int) -> None:
    assert input_size_of(_request(body=body)) == expected


def test_explicit_input_size_wins_over_the_body() -> None:
    assert input_size_of(_request(input_size=13, body={"instances": [1]})) == 13
    assert input_size_of(_request(input_size=0, body={"instances": [1, 2]})) == 0


def test_error_result_carries_reason_code_and_attempts() -> None:
    result = error_result("corr-9", "it broke", code=503, attempts=2)
    assert result.correlation_id == "corr-9"
    assert result.status is InferenceStatus.ERROR
    assert result.error == "it broke"
    assert result.error_code == 503
    assert result.attempts == 2
    assert result.output is None
    assert result.executor_id is None
    plain = error_result("corr-9", "no")
    assert plain.error_code is None
    assert plain.attempts == 0


# --- before and at selection ---------------------------------------------------------


def test_an_expired_request_finishes_without_selecting() -> None:
    clock = Clock(T0 + timedelta(seconds=10))  # exactly at the deadline: expired
    result = _result(_route(clock=clock).step)
    assert result.status is InferenceStatus.ERROR
    assert result.error == "deadline passed before the request was routed"
    assert result.attempts == 0
    assert result.correlation_id == "corr-1"


def test_selection_waits_at_most_the_selection_timeout_and_reports_the_input_size() -> None:
    step = _route().step
    assert step == Select(input_size=3, timeout_s=SELECTION_TIMEOUT_S)


def test_selection_timeout_shrinks_to_the_remaining_deadline() -> None:
    step = _route(_request(deadline_s=0.75)).step
    assert step == Select(input_size=3, timeout_s=0.75)


def test_a_failed_selection_is_an_error_result_with_its_reason() -> None:
    route = _route()
    route.selection_failed(RequestTimeout("no reply to corr-1 within 2s\nmore detail"))
    result = _result(route.step)
    assert result.error == "selection failed: no reply to corr-1 within 2s"
    assert result.attempts == 0
    assert result.error_code is None


@pytest.mark.parametrize(
    ("eliminated_by", "error", "expected"),
    [
        (
            "traits",
            "nothing offers these traits",
            "no candidate (eliminated by traits): nothing offers these traits",
        ),
        (None, None, "no candidate (eliminated by unknown): no executor passed the criteria"),
    ],
)
def test_no_candidate_names_the_criterion(
    eliminated_by: str | None, error: str | None, expected: str
) -> None:
    reply = SelectionReply(
        correlation_id="corr-1",
        status=SelectionStatus.NO_CANDIDATE,
        eliminated_by=eliminated_by,
        error=error,
    )
    result = _result(_selected(_route(), reply))
    assert result.error == expected
    assert result.attempts == 0


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            SelectionReply(correlation_id="c", status=SelectionStatus.ERROR, error="bad policy"),
            "selection failed: bad policy",
        ),
        (
            SelectionReply(correlation_id="c", status=SelectionStatus.ERROR),
            "selection failed: no candidates returned",
        ),
        (
            SelectionReply(correlation_id="c", status=SelectionStatus.OK),
            "selection failed: no candidates returned",
        ),
    ],
)
def test_an_error_or_empty_selection_is_an_error_result(
    reply: SelectionReply, expected: str
) -> None:
    result = _result(_selected(_route(), reply))
    assert result.error == expected
    assert result.attempts == 0


# --- calls -----------------------------------------------------------------------------


def test_the_best_candidate_is_called_and_its_answer_is_the_result() -> None:
    route = _route()
    call = _call(_selected(route, _reply("a", "b")))
    assert call.candidate.executor_id == "a"
    assert call.attempt == 1
    assert call.timeout_s == 10.0  # the remaining deadline, below the call timeout
    route.call_succeeded({"predictions": [1, 2, 3]})
    result = _result(route.step)
    assert result.status is InferenceStatus.OK
    assert result.correlation_id == "corr-1"
    assert result.executor_id == "a"
    assert result.model_name == "model-a"
    assert result.output == {"predictions": [1, 2, 3]}
    assert result.attempts == 1
    assert result.error is None


def test_call_timeout_is_the_smaller_of_the_call_timeout_and_the_remaining_deadline() -> None:
    clock = Clock()
    route = _route(_request(deadline_s=100), clock)
    assert _call(_selected(route, _reply("a", "b"))).timeout_s == CALL_TIMEOUT_S
    clock.advance(80)  # the first call took 80 s and failed: 20 s are left
    assert route.call_failed(ExecutorUnavailable("HTTP 503: busy"))
    second = _call(route.step)
    assert second.candidate.executor_id == "b"
    assert second.timeout_s == pytest.approx(20.0)


def test_time_spent_selecting_counts_against_the_call() -> None:
    clock = Clock()
    route = _route(clock=clock)
    clock.advance(1.5)
    assert _call(_selected(route, _reply("a"))).timeout_s == pytest.approx(8.5)


@pytest.mark.parametrize(
    "error",
    [
        ExecutorUnavailable("connection refused", status=None),
        ExecutorUnavailable("HTTP 503: busy"),
        ExecutorInternalError("HTTP 500: crashed"),
        DeadlineExceeded("no answer within 10s", status=None),
        RequestTimeout("generic timeout"),
    ],
)
def test_a_retriable_failure_fails_over_to_the_next_candidate(error: MulambdaError) -> None:
    route = _route()
    _call(_selected(route, _reply("a", "b", "c")))
    assert route.call_failed(error) is True
    second = _call(route.step)
    assert second.candidate.executor_id == "b"
    assert second.attempt == 2
    route.call_succeeded({"predictions": [0]})
    result = _result(route.step)
    assert result.status is InferenceStatus.OK
    assert result.executor_id == "b"
    assert result.attempts == 2


def test_a_non_retriable_executor_error_stops_with_its_status() -> None:
    route = _route()
    _call(_selected(route, _reply("a", "b")))
    assert route.call_failed(BadRequest("HTTP 400: expected int64")) is False
    result = _result(route.step)
    assert result.status is InferenceStatus.ERROR
    assert result.error == "all 1 candidate(s) failed; last: HTTP 400: expected int64"
    assert result.error_code == 400
    assert result.attempts == 1


def test_a_non_executor_error_stops_without_a_code() -> None:
    route = _route()
    _call(_selected(route, _reply("a", "b")))
    assert route.call_failed(ConfigurationError("unknown TF Serving verb 'x'")) is False
    result = _result(route.step)
    assert result.error == "all 1 candidate(s) failed; last: unknown TF Serving verb 'x'"
    assert result.error_code is None
    assert result.attempts == 1


def test_a_stop_after_failovers_reports_the_last_error() -> None:
    route = _route()
    _call(_selected(route, _reply("a", "b", "c")))
    assert route.call_failed(ExecutorUnavailable("HTTP 503: busy"))
    assert _call(route.step).candidate.executor_id == "b"
    assert route.call_failed(Unimplemented("HTTP 501: no classify")) is False
    result = _result(route.step)
    assert result.error == "all 2 candidate(s) failed; last: HTTP 501: no classify"
    assert result.error_code == 501
    assert result.attempts == 2


def test_when_every_candidate_fails_the_last_error_is_reported() -> None:
    route = _route()
    _call(_selected(route, _reply("a", "b", "c")))
    assert route.call_failed(ExecutorUnavailable("HTTP 503: busy"))
    assert route.call_failed(ExecutorInternalError("HTTP 500: crashed"))
    assert route.call_failed(ExecutorUnavailable("connection refused", status=None))
    result = _result(route.step)
    assert result.error == "all 3 candidate(s) failed; last: connection refused"
    assert result.error_code is None  # the last one had no HTTP status
    assert result.attempts == 3


def test_a_deadline_passing_during_failover_stops_before_the_next_call() -> None:
    clock = Clock()
    route = _route(clock=clock)
    _call(_selected(route, _reply("a", "b")))
    clock.advance(10)  # the failed call used up the whole deadline
    assert route.call_failed(ExecutorInternalError("HTTP 500: crashed")) is True
    result = _result(route.step)
    assert result.error == "all 1 candidate(s) failed; last: HTTP 500: crashed"
    assert result.error_code == 500
    assert result.attempts == 1


def test_a_deadline_passing_during_selection_calls_nobody() -> None:
    clock = Clock()
    route = _route(clock=clock)
    clock.advance(10.5)
    result = _result(_selected(route, _reply("a")))
    assert result.error == "all 0 candidate(s) failed; last: deadline passed during failover"
    assert result.attempts == 0


def test_candidates_are_called_in_rank_order_with_their_versions() -> None:
    reply = SelectionReply(
        correlation_id="corr-1",
        status=SelectionStatus.OK,
        candidates=[_candidate("a", version=3), _candidate("b"), _candidate("c", version=1)],
    )
    route = _route()
    route.selected(reply)
    called: list[tuple[str, int | None, int]] = []
    while isinstance(step := route.step, Call):
        called.append((step.candidate.executor_id, step.candidate.model_version, step.attempt))
        route.call_failed(ExecutorUnavailable("HTTP 503: busy"))
    assert called == [("a", 3, 1), ("b", None, 2), ("c", 1, 3)]
    assert _result(route.step).attempts == 3


# --- driving it as the worker does -----------------------------------------------------


def _drive(route: Route, reply: SelectionReply, outcomes: list[Any]) -> list[Step]:
    """Run ``route`` as the router does: select, then report ``outcomes`` call by call
    (a MulambdaError fails the call, anything else is the executor's answer)."""
    steps: list[Step] = []
    pending = list(outcomes)
    while True:
        step = route.step
        steps.append(step)
        if isinstance(step, Finished):
            return steps
        if isinstance(step, Select):
            route.selected(reply)
            continue
        outcome = pending.pop(0)
        if isinstance(outcome, MulambdaError):
            route.call_failed(outcome)
        else:
            route.call_succeeded(outcome)


def test_driven_like_the_worker_it_takes_one_step_per_outcome() -> None:
    steps = _drive(
        _route(),
        _reply("a", "b", "c"),
        [ExecutorUnavailable("HTTP 503: busy"), {"predictions": [7]}],
    )
    assert [type(s).__name__ for s in steps] == ["Select", "Call", "Call", "Finished"]
    result = _result(steps[-1])
    assert (result.status, result.executor_id, result.attempts) == (InferenceStatus.OK, "b", 2)


# --- misuse --------------------------------------------------------------------------


def test_outcomes_out_of_turn_are_refused() -> None:
    route = _route()
    with pytest.raises(MulambdaError, match="call success reported while the step is Select"):
        route.call_succeeded({"predictions": []})
    with pytest.raises(MulambdaError, match="call failure reported while the step is Select"):
        route.call_failed(ExecutorUnavailable("busy"))
    route.selected(_reply("a"))
    with pytest.raises(MulambdaError, match="selection reply reported while the step is Call"):
        route.selected(_reply("a"))
    route.call_succeeded({"predictions": []})
    with pytest.raises(MulambdaError, match="while the step is Finished"):
        route.selection_failed(RequestTimeout("late"))
    assert _result(route.step).status is InferenceStatus.OK  # unchanged by the refusals
