"""The adaptive policy and the selection request's ``answer_by``: late candidates are left
out, and a request nobody can serve in time is answered ``no_candidate`` at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from mulambda.runtime.settings import Settings
from mulambda.selection.answers import Answerer
from mulambda.selection.policies import DEFAULT_POLICY, PolicyState, select
from mulambda.selection.view import ExecutorView
from mulambda.wire.events import (
    ExecutorRegistration,
    LatencyMeasurement,
    SelectionRequest,
    SelectionStatus,
    Slo,
    SoftWeights,
    Traits,
)

pytestmark = pytest.mark.unit

TRAITS = Traits(model_type="classification", input_format="feature", output_format="confidence")


def _view(now: float, probes: dict[str, float]) -> ExecutorView:
    """Executors with these probe latencies to client ``me`` (estimate = probe + 10 ms
    of default service time while nothing is learned)."""
    view = ExecutorView()
    for executor_id, probe_ms in probes.items():
        view.apply_registration(
            ExecutorRegistration(
                executor_id=executor_id,
                model_name=executor_id,
                traits=TRAITS,
                accuracy=0.9 if executor_id == "far" else 0.5,
                endpoint=f"http://{executor_id}:8501",
            ),
            now,
        )
        view.apply_latency(
            LatencyMeasurement(executor_id=executor_id, client_id="me", latency_ms=probe_ms), now
        )
    return view


def _request(now: float, answer_in_s: float | None, **fields: object) -> SelectionRequest:
    moment = datetime.fromtimestamp(now, UTC)
    return SelectionRequest(
        reply_topic="replies",
        deadline=moment + timedelta(seconds=5),
        client_id="me",
        traits=TRAITS,
        weights=SoftWeights(latency=0.2, accuracy=0.8),
        answer_by=None if answer_in_s is None else moment + timedelta(seconds=answer_in_s),
        **fields,  # type: ignore[arg-type]
    )


def test_adaptive_is_the_default_everywhere() -> None:
    assert DEFAULT_POLICY == "adaptive"
    assert Settings().selector_default_policy == DEFAULT_POLICY
    assert Answerer(selector_id="s").default_policy == DEFAULT_POLICY
    now = time.time()
    reply = select(_view(now, {"near": 1.0}), _request(now, None), now, state=PolicyState())
    assert reply.policy == "adaptive"


def test_candidates_that_would_answer_after_answer_by_are_left_out() -> None:
    now = time.time()
    view = _view(now, {"near": 1.0, "far": 200.0})  # estimates 11 and 210 ms
    # Accuracy-heavy weights prefer "far" while time allows ...
    roomy = select(view, _request(now, 1.0), now, state=PolicyState())
    assert [c.executor_id for c in roomy.candidates] == ["far", "near"]
    # ... and leave it out when its answer would come too late.
    tight = select(view, _request(now, 0.1), now, state=PolicyState())
    assert tight.status is SelectionStatus.OK
    assert [c.executor_id for c in tight.candidates] == ["near"]


def test_no_candidate_in_time_is_answered_at_once_naming_the_deadline() -> None:
    now = time.time()
    view = _view(now, {"near": 50.0, "far": 200.0})
    reply = select(view, _request(now, 0.03), now, state=PolicyState())
    assert reply.status is SelectionStatus.NO_CANDIDATE
    assert reply.eliminated_by == "deadline"
    assert "no candidate can answer before the deadline" in (reply.error or "")
    assert "best estimate is 60 ms, 30 ms are left" in (reply.error or "")
    # A passed answer_by leaves nothing either.
    late = select(view, _request(now, -1.0), now, state=PolicyState())
    assert late.eliminated_by == "deadline"


def test_a_latency_slo_stricter_than_the_deadline_is_named_instead() -> None:
    now = time.time()
    view = _view(now, {"near": 50.0})
    reply = select(view, _request(now, 1.0, slo=Slo(max_latency_ms=20)), now, state=PolicyState())
    assert reply.eliminated_by == "slo.max_latency_ms"


def test_weighted_the_prototype_ignores_answer_by() -> None:
    now = time.time()
    view = _view(now, {"near": 50.0})
    reply = select(view, _request(now, 0.01, policy="weighted"), now, state=PolicyState())
    assert [c.executor_id for c in reply.candidates] == ["near"]


def test_a_selection_shed_for_its_deadline_adds_no_load() -> None:
    now = time.time()
    view = _view(now, {"near": 50.0})
    answer = Answerer(selector_id="s").answer(view, _request(now, 0.01), now)
    assert answer.reply.status is SelectionStatus.NO_CANDIDATE
    entry = view.get("near")
    assert entry is not None
    assert entry.load == 0
