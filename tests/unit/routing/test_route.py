"""The route decision: selection reply and call outcomes in, steps and the result out.

No servers and no sleeping: outcomes are reported by hand and time is a fixed clock
moved by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mulambda.errors import (
    ConfigurationError,
    DecodeError,
    KafkaUnavailable,
    MulambdaError,
    RequestTimeout,
)
from mulambda.protocols.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorInternalError,
    ExecutorUnavailable,
    Unimplemented,
)
from mulambda.routing.rankings import RankingCache
from mulambda.routing.route import (
    MIN_SELECTION_TRY_S,
    SELECTION_RETRY_INTERVAL_S,
    Call,
    Finished,
    Route,
    Select,
    Step,
    error_result,
    input_size_of,
)
from mulambda.routing.suspects import SuspectEndpoints, endpoint_of
from mulambda.wire.events import (
    Candidate,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    SelectionReply,
    SelectionStatus,
    Slo,
    SoftWeights,
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


def _candidate(
    executor_id: str, *, version: int | None = None, endpoint: str | None = None
) -> Candidate:
    return Candidate(
        executor_id=executor_id,
        endpoint=endpoint or f"http://{executor_id}:8501",
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
        # OIP v2 typed tensors: rows of the first tensor's shape, not the tensor count
        (
            {
                "inputs": [
                    {"name": "x", "shape": [4, 13], "datatype": "FP64", "data": [0.0] * 52},
                    {"name": "y", "shape": [9], "datatype": "INT64", "data": list(range(9))},
                ]
            },
            4,
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.5]}]}, 1),
        ({"inputs": [{"name": "x", "shape": [0, 13], "datatype": "FP64", "data": []}]}, 0),
        ({"inputs": [{"name": "s", "shape": [], "datatype": "FP64", "data": [1.0]}]}, 1),
        # not OIP tensors after all: the length of the list, as before
        ({"inputs": [{"name": "x"}, {"name": "y"}]}, 2),
        ({"inputs": [{"name": "x", "shape": ["n", 3]}, {"name": "y"}]}, 2),
        ({"inputs": [{"name": "x", "shape": [True]}]}, 1),
        ({"inputs": []}, 0),
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


def test_a_failed_selection_without_time_for_a_retry_is_an_error_result_with_its_reason() -> None:
    clock = Clock()
    route = _route(_request(deadline_s=2.4), clock)  # 2 s try + 0.5 s margin: no room
    clock.advance(SELECTION_TIMEOUT_S)
    route.selection_failed(RequestTimeout("no reply to corr-1 within 2s\nmore detail"))
    result = _result(route.step)
    assert result.error == "selection failed: no reply to corr-1 within 2s"
    assert result.attempts == 0
    assert result.error_code is None
    assert result.selection is None
    assert route.selection_tries == 1


def test_a_non_retriable_selection_failure_is_not_retried() -> None:
    route = _route()  # 10 s left, but retrying cannot help
    route.selection_failed(DecodeError("undecodable reply: not valid JSON"))
    assert _result(route.step).error == "selection failed: undecodable reply: not valid JSON"
    assert route.selection_tries == 1


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
    route.call_succeeded({"predictions": [1, 2, 3]}, call_ms=1.5)
    result = _result(route.step)
    assert result.status is InferenceStatus.OK
    assert result.call_ms == 1.5
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


# --- selection retries -----------------------------------------------------------------


def test_a_timed_out_selection_is_retried_at_once_while_the_deadline_allows() -> None:
    clock = Clock()
    route = _route(clock=clock)  # 10 s deadline, 2 s tries, 0.5 s margin
    timeouts = []
    while isinstance(step := route.step, Select):
        assert step.delay_s == 0  # the try took its whole timeout: no need to wait
        timeouts.append(step.timeout_s)
        clock.advance(step.timeout_s)
        route.selection_failed(RequestTimeout(f"no reply within {step.timeout_s:g}s"))
    assert timeouts == pytest.approx([2.0, 2.0, 2.0, 2.0, 1.5])  # the last ends 0.5 s early
    result = _result(route.step)
    assert result.error == "selection failed after 5 tries: no reply within 1.5s"
    assert result.attempts == 0
    assert route.selection_tries == 5
    assert clock.at == T0 + timedelta(seconds=9.5)  # answered before the deadline


def test_a_quick_selection_failure_is_retried_after_a_pause() -> None:
    clock = Clock()
    route = _route(clock=clock)
    clock.advance(0.01)
    route.selection_failed(KafkaUnavailable("send to t.selection-requests failed"))
    retry = route.step
    assert isinstance(retry, Select)
    assert retry.delay_s == pytest.approx(SELECTION_RETRY_INTERVAL_S - 0.01)
    assert retry.timeout_s == SELECTION_TIMEOUT_S
    clock.advance(retry.delay_s + 0.01)  # waited, then failed quickly again
    route.selection_failed(KafkaUnavailable("send to t.selection-requests failed"))
    again = route.step
    assert isinstance(again, Select)
    assert again.delay_s == pytest.approx(SELECTION_RETRY_INTERVAL_S - 0.01)  # never spins


def test_a_retry_leaves_the_call_margin_before_the_deadline() -> None:
    clock = Clock()
    route = Route(
        _request(deadline_s=3.0),
        selection_timeout_s=SELECTION_TIMEOUT_S,
        call_timeout_s=CALL_TIMEOUT_S,
        call_margin_s=0.8,
        now=clock.now,
    )
    clock.advance(SELECTION_TIMEOUT_S)
    route.selection_failed(RequestTimeout("no reply"))
    retry = route.step
    assert isinstance(retry, Select)
    assert retry.timeout_s == pytest.approx(0.2)  # 1 s left, 0.8 s of it for the call


def test_no_retry_shorter_than_the_least_try() -> None:
    clock = Clock()
    route = _route(_request(deadline_s=2.5 + MIN_SELECTION_TRY_S / 2), clock)
    clock.advance(SELECTION_TIMEOUT_S)
    route.selection_failed(RequestTimeout("no reply"))
    assert _result(route.step).error == "selection failed: no reply"


def test_a_retried_selection_that_answers_routes_as_fresh() -> None:
    clock = Clock()
    route = _route(clock=clock)
    clock.advance(SELECTION_TIMEOUT_S)
    route.selection_failed(RequestTimeout("no reply"))
    call = _call(_selected(route, _reply("a")))
    assert call.timeout_s == pytest.approx(8.0)
    route.call_succeeded({"predictions": [1]})
    result = _result(route.step)
    assert result.status is InferenceStatus.OK
    assert result.selection == "fresh"
    assert route.selection_tries == 2


# --- recent rankings -------------------------------------------------------------------


def _routes(clock: Clock, rankings: RankingCache) -> Callable[..., Route]:
    def make(request: InferenceRequest | None = None) -> Route:
        return Route(
            request or _request(),
            selection_timeout_s=SELECTION_TIMEOUT_S,
            call_timeout_s=CALL_TIMEOUT_S,
            rankings=rankings,
            now=clock.now,
        )

    return make


def test_a_fresh_selection_says_so_and_is_remembered() -> None:
    clock = Clock()
    rankings = RankingCache(max_age_s=30, max_entries=10)
    route = _routes(clock, rankings)()
    _call(_selected(route, _reply("a", "b")))
    route.call_succeeded({"predictions": [1]})
    assert _result(route.step).selection == "fresh"
    assert rankings.recall(_request(), clock.now().timestamp()) == tuple(
        _reply("a", "b").candidates
    )


def test_a_failed_selection_routes_at_once_on_the_recent_ranking() -> None:
    clock = Clock()
    make = _routes(clock, RankingCache(max_age_s=30, max_entries=10))
    first = make()
    first.selected(_reply("a", "b"))
    clock.advance(10)
    later = make(_request(deadline_s=30, correlation_id="corr-2", body={"instances": [1]}))
    later.selection_failed(RequestTimeout("no reply within 2s"))
    call = _call(later.step)  # no retry first: the selector may be failing over
    assert call.candidate.executor_id == "a"
    assert later.selection_tries == 1
    assert later.call_failed(ExecutorUnavailable("HTTP 503: busy"))
    assert _call(later.step).candidate.executor_id == "b"  # failover down the cached list
    later.call_succeeded({"predictions": [2]})
    result = _result(later.step)
    assert (result.status, result.executor_id, result.attempts) == (InferenceStatus.OK, "b", 2)
    assert result.selection == "cached"


def test_a_cached_ranking_serves_whatever_made_the_selection_fail() -> None:
    clock = Clock()
    make = _routes(clock, RankingCache(max_age_s=30, max_entries=10))
    make().selected(_reply("a"))
    later = make()
    later.selection_failed(DecodeError("undecodable reply"))  # not retriable, still served
    assert _call(later.step).candidate.executor_id == "a"
    assert later.selection == "cached"


def test_a_cached_ranking_that_fails_says_cached_in_the_error() -> None:
    clock = Clock()
    make = _routes(clock, RankingCache(max_age_s=30, max_entries=10))
    make().selected(_reply("a"))
    later = make()
    later.selection_failed(RequestTimeout("no reply"))
    later.call_failed(ExecutorUnavailable("HTTP 503: busy"))
    result = _result(later.step)
    assert result.error == "all 1 candidate(s) failed; last: HTTP 503: busy"
    assert result.selection == "cached"


@pytest.mark.parametrize(
    "other",
    [
        {"client_id": "cl-2"},
        {"traits": TRAITS.model_copy(update={"model_type": "regression"})},
        {"weights": SoftWeights(latency=0.9, accuracy=0.1)},
        {"policy": "adaptive"},
        {"slo": Slo(max_latency_ms=50)},
    ],
)
def test_a_ranking_serves_only_requests_of_the_same_kind(other: dict[str, Any]) -> None:
    clock = Clock()
    make = _routes(clock, RankingCache(max_age_s=30, max_entries=10))
    make().selected(_reply("a"))
    different = make(_request(**other))
    different.selection_failed(RequestTimeout("no reply"))
    assert isinstance(different.step, Select)  # retried, not served from another's ranking
    assert different.selection is None


def test_a_ranking_older_than_the_bound_is_not_used() -> None:
    clock = Clock()
    make = _routes(clock, RankingCache(max_age_s=30, max_entries=10))
    make().selected(_reply("a"))
    clock.advance(30)
    later = make(_request(deadline_s=40))
    later.selection_failed(RequestTimeout("no reply"))
    assert isinstance(later.step, Select)


def test_no_candidate_forgets_the_recent_ranking() -> None:
    clock = Clock()
    rankings = RankingCache(max_age_s=30, max_entries=10)
    make = _routes(clock, rankings)
    make().selected(_reply("a"))
    gone = SelectionReply(
        correlation_id="c", status=SelectionStatus.NO_CANDIDATE, eliminated_by="traits"
    )
    nobody = make()
    nobody.selected(gone)
    assert _result(nobody.step).selection is None
    assert len(rankings) == 0
    later = make()
    later.selection_failed(RequestTimeout("no reply"))
    assert isinstance(later.step, Select)  # the old ranking does not contradict the selector


# --- failover across processes ------------------------------------------------------------

A = "http://10.0.0.1:8501"
B = "http://10.0.0.2:8501"
REFUSED = ExecutorUnavailable("POST ...: ClientConnectorError: connection refused", status=None)


def _spread(*placed: tuple[str, str]) -> SelectionReply:
    """A reply ranking ``(executor id, endpoint)`` pairs in that order."""
    return SelectionReply(
        correlation_id="corr-1",
        status=SelectionStatus.OK,
        candidates=[_candidate(e, endpoint=endpoint) for e, endpoint in placed],
    )


def _shared(clock: Clock, suspects: SuspectEndpoints) -> Callable[[], Route]:
    def make() -> Route:
        return Route(
            _request(),
            selection_timeout_s=SELECTION_TIMEOUT_S,
            call_timeout_s=CALL_TIMEOUT_S,
            suspects=suspects,
            now=clock.now,
        )

    return make


def _called(route: Route, outcomes: dict[str, MulambdaError | None]) -> list[str]:
    """Executors ``route`` calls in turn; each fails with its outcome, or (None) answers."""
    called = []
    while isinstance(step := route.step, Call):
        executor_id = step.candidate.executor_id
        called.append(executor_id)
        error = outcomes.get(executor_id)
        if error is None:
            route.call_succeeded({"predictions": [executor_id]})
        else:
            route.call_failed(error)
    return called


def test_a_refused_endpoint_is_tried_after_the_candidates_elsewhere() -> None:
    route = _route()
    route.selected(_spread(("a1", A), ("a2", A), ("a3", A), ("b1", B), ("b2", B)))
    busy = ExecutorUnavailable("HTTP 503: busy")
    called = _called(route, {"a1": REFUSED, "b1": busy, "b2": busy, "a2": REFUSED})
    assert called == ["a1", "b1", "b2", "a2", "a3"]  # a2 and a3 only once B ran out
    result = _result(route.step)
    assert (result.status, result.executor_id, result.attempts) == (InferenceStatus.OK, "a3", 5)


def test_a_dead_process_costs_one_attempt() -> None:
    route = _route()
    route.selected(_spread(("a1", A), ("a2", A), ("a3", A), ("b1", B)))
    assert _called(route, {"a1": REFUSED}) == ["a1", "b1"]
    assert _result(route.step).attempts == 2


@pytest.mark.parametrize(
    "error",
    [
        ExecutorUnavailable("HTTP 503: busy"),  # an answer: its neighbours may be fine
        DeadlineExceeded("no answer within 10s", status=None),  # maybe just slow
        ExecutorInternalError("HTTP 500: crashed"),
    ],
)
def test_failures_with_an_answer_or_a_timeout_do_not_suspect_the_endpoint(
    error: MulambdaError,
) -> None:
    route = _route()
    route.selected(_spread(("a1", A), ("a2", A), ("b1", B)))
    assert _called(route, {"a1": error}) == ["a1", "a2"]


def test_later_requests_try_a_suspect_endpoint_last_until_the_suspicion_expires() -> None:
    clock = Clock()
    make = _shared(clock, SuspectEndpoints(expiry_s=5))
    ranking = _spread(("a1", A), ("a2", A), ("b1", B))
    first = make()
    first.selected(ranking)
    assert _called(first, {"a1": REFUSED}) == ["a1", "b1"]
    clock.advance(4)
    second = make()
    second.selected(ranking)
    assert _called(second, {}) == ["b1"]  # no attempt on the dead process at all
    clock.advance(1)  # 5 s after the refusal
    third = make()
    third.selected(ranking)
    assert _called(third, {}) == ["a1"]


def test_a_success_clears_the_suspicion_at_once() -> None:
    clock = Clock()
    suspects = SuspectEndpoints(expiry_s=5)
    make = _shared(clock, suspects)
    first = make()
    first.selected(_spread(("a1", A), ("b1", B)))
    assert _called(first, {"a1": REFUSED}) == ["a1", "b1"]
    back = make()
    back.selected(_spread(("b1", B), ("a1", A)))
    assert _called(back, {"b1": ExecutorUnavailable("HTTP 503: busy")}) == ["b1", "a1"]
    assert suspects.suspects(clock.now().timestamp()) == []  # a1 answered: A is back
    later = make()
    later.selected(_spread(("a1", A), ("b1", B)))
    assert _called(later, {}) == ["a1"]


def test_candidates_all_behind_suspect_endpoints_are_still_tried_in_rank_order() -> None:
    clock = Clock()
    suspects = SuspectEndpoints(expiry_s=5)
    suspects.mark(endpoint_of(A), clock.now().timestamp())
    suspects.mark(endpoint_of(B), clock.now().timestamp())
    route = _shared(clock, suspects)()
    route.selected(_spread(("a1", A), ("b1", B), ("a2", A)))
    assert _called(route, {"a1": REFUSED, "b1": REFUSED}) == ["a1", "b1", "a2"]


def test_one_endpoint_is_one_process_whatever_the_url_spelling() -> None:
    route = _route()
    route.selected(
        _spread(
            ("a1", "http://Executor-A:80/"),
            ("a2", "http://executor-a"),
            ("a3", "http://executor-a:80/v1"),
            ("b1", "http://executor-a:8080"),
        )
    )
    assert _called(route, {"a1": REFUSED}) == ["a1", "b1"]


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
