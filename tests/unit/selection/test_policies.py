"""Selection policies: the prototype's weighted score pinned by hand, baselines, adaptive."""

from __future__ import annotations

import itertools
import random
import statistics
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mulambda.errors import MulambdaError
from mulambda.selection.policies import (
    LATENCY_BUCKETS_MS,
    POLICIES,
    PolicyState,
    bucket_latency_score,
    select,
    smooth_latency_score,
)
from mulambda.selection.view import CandidateSet, ExecutorView
from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    Slo,
    SoftWeights,
    Traits,
    utcnow,
)

pytestmark = pytest.mark.unit

WINE = Traits(model_type="classification", input_format="wine-13", output_format="probs-3")
TEXT = Traits(model_type="sentiment", input_format="text", output_format="label")
NOW = 100.0

# Some of the prototype's synthetic executor profiles (reference/prototype_evaluation.yaml):
# registered accuracy = confidences[0], per-element delay = alpha s/element in ms.
PROFILES = {
    "FastBad": (0.50, 1.0),
    "FastOK": (0.80, 2.0),
    "MidOK": (0.85, 20.0),
    "MidGood": (0.95, 40.0),
    "SlowGood": (1.00, 80.0),
}
# The replay's per-node client-executor network delay (ms).
NODE_DELAY_MS = [0.0, 10.0, 40.0, 100.0]


def reg(
    executor_id: str, *, accuracy: float = 0.9, delay: float = 0.0, traits: Traits = WINE
) -> ExecutorRegistration:
    return ExecutorRegistration(
        executor_id=executor_id,
        model_name=f"model-{executor_id}",
        model_version=1,
        traits=traits,
        accuracy=accuracy,
        endpoint=f"http://{executor_id}:8501",
        model_data_delay_ms_per_element=delay,
    )


def add(
    view: ExecutorView,
    executor_id: str,
    *,
    accuracy: float = 0.9,
    delay: float = 0.0,
    probe_ms: float | None = None,
    client: str = "me",
    traits: Traits = WINE,
) -> None:
    view.apply_registration(
        reg(executor_id, accuracy=accuracy, delay=delay, traits=traits), now=NOW
    )
    if probe_ms is not None:
        view.apply_latency(
            LatencyMeasurement(executor_id=executor_id, client_id=client, latency_ms=probe_ms),
            now=NOW,
        )


def add_profile(view: ExecutorView, executor_id: str, profile: str, node: int) -> None:
    accuracy, delay = PROFILES[profile]
    add(view, executor_id, accuracy=accuracy, delay=delay, probe_ms=NODE_DELAY_MS[node])


def request(
    *,
    latency: float = 0.5,
    accuracy: float = 0.5,
    size: int = 1,
    top_k: int = 3,
    policy: str | None = None,
    slo: Slo | None = None,
    client: str = "me",
    traits: Traits = WINE,
) -> SelectionRequest:
    return SelectionRequest(
        reply_topic="replies",
        deadline=utcnow() + timedelta(seconds=30),
        client_id=client,
        traits=traits,
        weights=SoftWeights(latency=latency, accuracy=accuracy),
        input_size=size,
        top_k=top_k,
        policy=policy,
        slo=slo,
    )


def run(
    view: ExecutorView,
    req: SelectionRequest,
    *,
    policy: str = "weighted",
    state: PolicyState | None = None,
) -> SelectionReply:
    return select(view, req, NOW, default_policy=policy, state=state or PolicyState())


def ranked(reply: SelectionReply) -> list[str]:
    assert reply.status == SelectionStatus.OK, reply.error
    return [c.executor_id for c in reply.candidates]


# --- the latency score -----------------------------------------------------------------


def bucket_score(estimate: float) -> float:
    """The prototype's bucket score written plainly: 1 - i/9 for the first bound >= it."""
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if estimate <= bound:
            return 1 - i / 9
    return 0.0


@given(st.floats(min_value=0, max_value=2000, allow_nan=False))
def test_smooth_score_agrees_with_buckets_at_bounds_and_lies_between(estimate: float) -> None:
    smooth = smooth_latency_score(estimate)
    assert bucket_score(estimate) - 1e-12 <= smooth <= 1.0
    if estimate in LATENCY_BUCKETS_MS or estimate <= 10:
        assert smooth == pytest.approx(bucket_score(estimate))
    assert smooth_latency_score(estimate + 1.0) <= smooth


@given(st.floats(min_value=0, max_value=2000, allow_nan=False))
def test_bucket_latency_score_is_the_prototype_bucket_score(estimate: float) -> None:
    assert bucket_latency_score(estimate) == pytest.approx(bucket_score(estimate))


# --- weighted, hand-computed -------------------------------------------------------------


def prototype_trio() -> ExecutorView:
    view = ExecutorView()
    add_profile(view, "fastbad-n1", "FastBad", node=1)  # est 10 + 1 * 10 = 20
    add_profile(view, "fastok-n0", "FastOK", node=0)  # est 0 + 2 * 10 = 20
    add_profile(view, "slowgood-n0", "SlowGood", node=0)  # est 0 + 80 * 10 = 800
    return view


def test_weighted_latency_only_ties_break_on_estimate_then_id() -> None:
    view = prototype_trio()
    # Both fast ones estimate 20 ms (bucket 1 -> 8/9): equal score and estimate; the
    # higher accuracy wins; SlowGood's 800 ms is bucket 8 -> 1/9.
    reply = run(view, request(latency=1.0, accuracy=0.0, size=10))
    assert ranked(reply) == ["fastok-n0", "fastbad-n1", "slowgood-n0"]
    scores = [c.score for c in reply.candidates]
    assert scores == pytest.approx([8 / 9, 8 / 9, 1 / 9])
    assert [c.estimated_latency_ms for c in reply.candidates] == [20.0, 20.0, 800.0]


def test_weighted_accuracy_only() -> None:
    reply = run(prototype_trio(), request(latency=0.0, accuracy=1.0, size=10))
    assert ranked(reply) == ["slowgood-n0", "fastok-n0", "fastbad-n1"]
    assert [c.score for c in reply.candidates] == pytest.approx([1.0, 0.8, 0.5])


def test_weighted_balanced() -> None:
    reply = run(prototype_trio(), request(latency=0.5, accuracy=0.5, size=10))
    assert ranked(reply) == ["fastok-n0", "fastbad-n1", "slowgood-n0"]
    assert [c.score for c in reply.candidates] == pytest.approx(
        [0.5 * 8 / 9 + 0.5 * 0.8, 0.5 * 8 / 9 + 0.5 * 0.5, 0.5 * 1 / 9 + 0.5 * 1.0]
    )


def test_weighted_input_size_changes_the_winner() -> None:
    view = ExecutorView()
    add_profile(view, "midgood", "MidGood", node=0)  # probe 0, 40 ms/element
    add_profile(view, "fastok", "FastOK", node=1)  # probe 10, 2 ms/element

    small = run(view, request(size=1, top_k=2))
    # midgood 40 ms -> 7/9; fastok 12 ms -> 8/9; accuracy scores 1 and 0.8 / 0.95.
    assert ranked(small) == ["midgood", "fastok"]
    assert [c.score for c in small.candidates] == pytest.approx(
        [0.5 * 7 / 9 + 0.5, 0.5 * 8 / 9 + 0.5 * 0.8 / 0.95]
    )

    large = run(view, request(size=10, top_k=2))
    # midgood 400 ms -> 2/9; fastok exactly 30 ms -> still bucket 1 -> 8/9.
    assert ranked(large) == ["fastok", "midgood"]
    assert [c.estimated_latency_ms for c in large.candidates] == [30.0, 400.0]
    assert [c.score for c in large.candidates] == pytest.approx(
        [0.5 * 8 / 9 + 0.5 * 0.8 / 0.95, 0.5 * 2 / 9 + 0.5]
    )


@pytest.mark.parametrize(
    ("probe_ms", "expected_score"),
    [
        (0.0, 1.0),
        (10.0, 1.0),  # bound 0 is >= 10: bucket 0
        (10.001, 8 / 9),
        (30.0, 8 / 9),
        (30.5, 7 / 9),
        (630.0, 2 / 9),
        (1020.0, 1 / 9),
        (1020.5, 0.0),
        (3_600_000.0, 0.0),  # the largest latency a measurement may carry
    ],
)
def test_weighted_bucket_edges_through_selection(probe_ms: float, expected_score: float) -> None:
    view = ExecutorView()
    add(view, "a", probe_ms=probe_ms)
    reply = run(view, request(latency=1.0, accuracy=0.0, size=1000))
    assert reply.candidates[0].score == pytest.approx(expected_score, abs=1e-12)


def test_weighted_size_term_hits_the_edge_exactly() -> None:
    view = ExecutorView()
    add(view, "a", delay=0.5, probe_ms=5.0)  # 5 + 0.5 * 10 = 10: bucket 0
    add(view, "b", delay=0.5, probe_ms=5.001)  # 10.001: bucket 1
    reply = run(view, request(latency=1.0, accuracy=0.0, size=10))
    assert ranked(reply) == ["a", "b"]
    assert [c.score for c in reply.candidates] == pytest.approx([1.0, 8 / 9])


def test_weighted_latency_heavy_scan_keeps_a_tie_at_the_size_term_bound() -> None:
    view = ExecutorView()
    add(view, "x", accuracy=0.5, delay=0.0, probe_ms=10.0)  # 10 ms
    add(view, "y", accuracy=0.5, delay=0.1, probe_ms=9.0)  # 10 ms
    add(view, "z", accuracy=0.9, delay=1.0, probe_ms=0.0)  # 10 ms, all of it size term
    # All score 1.0 at 10 ms: the most accurate wins even though it is scanned last.
    reply = run(view, request(latency=1.0, accuracy=0.0, size=10, top_k=2))
    assert ranked(reply) == ["z", "x"]


def test_weighted_exact_ties_break_on_executor_id() -> None:
    view = ExecutorView()
    for executor_id in ("c", "a", "b"):
        add(view, executor_id, accuracy=0.7, probe_ms=25.0)
    assert ranked(run(view, request())) == ["a", "b", "c"]


def test_weighted_score_tie_breaks_on_lower_estimate() -> None:
    view = ExecutorView()
    add(view, "a", accuracy=0.9, probe_ms=29.0)  # bucket 1
    add(view, "b", accuracy=0.9, probe_ms=11.0)  # bucket 1, faster
    reply = run(view, request())
    assert ranked(reply) == ["b", "a"]
    assert reply.candidates[0].score == reply.candidates[1].score


def test_weighted_unknown_latency_falls_back() -> None:
    view = ExecutorView(default_latency_ms=50.0)
    add(view, "a", accuracy=1.0)
    # No probe anywhere: default 50 ms -> bucket 2.
    reply = run(view, request(latency=1.0, accuracy=0.0))
    assert reply.candidates[0].estimated_latency_ms == 50.0
    assert reply.candidates[0].score == pytest.approx(7 / 9)

    # Probes to other clients: the executor's own median (5, 8, 200 -> 8).
    for client, ms in (("x", 5.0), ("y", 8.0), ("z", 200.0)):
        view.apply_latency(
            LatencyMeasurement(executor_id="a", client_id=client, latency_ms=ms), now=NOW
        )
    add(view, "b", accuracy=1.0)  # no probe: the view-wide median of 5, 8, 200 = 8
    reply = run(view, request(latency=1.0, accuracy=0.0))
    assert [c.estimated_latency_ms for c in reply.candidates] == [8.0, 8.0]
    assert [c.score for c in reply.candidates] == [1.0, 1.0]


def test_weighted_all_zero_accuracy_scores_latency_only() -> None:
    view = ExecutorView()
    add(view, "a", accuracy=0.0, probe_ms=100.0)
    add(view, "b", accuracy=0.0, probe_ms=5.0)
    reply = run(view, request())
    assert ranked(reply) == ["b", "a"]
    assert [c.score for c in reply.candidates] == pytest.approx([0.5, 0.5 * 5 / 9])


def test_top_k_limits_and_orders() -> None:
    view = ExecutorView()
    for i, ms in enumerate([500.0, 5.0, 50.0, 80.0, 200.0]):
        add(view, f"e{i}", probe_ms=ms)
    reply = run(view, request(latency=1.0, accuracy=0.0, top_k=2))
    assert ranked(reply) == ["e1", "e2"]
    assert len(ranked(run(view, request(top_k=100)))) == 5


def test_candidates_carry_the_executor_fields() -> None:
    view = ExecutorView()
    add(view, "a", accuracy=0.8, probe_ms=1.0)
    candidate = run(view, request()).candidates[0]
    assert (candidate.endpoint, candidate.model_name, candidate.model_version) == (
        "http://a:8501",
        "model-a",
        1,
    )
    assert candidate.accuracy == 0.8


# --- select(): outcomes ------------------------------------------------------------------


def test_no_candidate_names_the_criterion() -> None:
    view = ExecutorView()
    reply = run(view, request())
    assert (reply.status, reply.eliminated_by) == (SelectionStatus.NO_CANDIDATE, "traits")
    assert reply.error
    assert reply.candidates == []

    add(view, "a")
    view.apply_status(ExecutorStatus(executor_id="a", model_state=ModelState.LOADING), NOW)
    assert run(view, request()).eliminated_by == "model_state"

    reply = select(view, request(), NOW + 60, state=PolicyState())
    assert (reply.status, reply.eliminated_by) == (SelectionStatus.NO_CANDIDATE, "liveness")


def test_unknown_policy_is_an_error_reply() -> None:
    view = ExecutorView()
    add(view, "a")
    req = request(policy="fastest-please")
    reply = select(view, req, NOW, state=PolicyState(), selector_id="sel-1")
    assert reply.status == SelectionStatus.ERROR
    assert reply.error is not None
    assert "fastest-please" in reply.error
    assert (reply.correlation_id, reply.selector_id) == (req.correlation_id, "sel-1")


def test_request_policy_overrides_default() -> None:
    view = ExecutorView()
    add(view, "near", accuracy=0.1, probe_ms=1.0)
    add(view, "far", accuracy=1.0, probe_ms=900.0)
    mda = request(latency=0.0, accuracy=1.0, top_k=1)
    assert ranked(run(view, mda, policy="weighted")) == ["far"]
    reply = run(view, request(latency=0.0, accuracy=1.0, top_k=1, policy="plain-net-latency"))
    assert reply.policy == "plain-net-latency"
    assert ranked(reply) == ["near"]


def test_policy_mulambda_error_becomes_error_reply() -> None:
    def broken(*_: object) -> list[object]:
        raise MulambdaError("policy exploded")

    view = ExecutorView()
    add(view, "a")
    reply = select(
        view,
        request(policy="broken"),
        NOW,
        state=PolicyState(),
        policies={"broken": broken},  # type: ignore[dict-item]
    )
    assert (reply.status, reply.error) == (SelectionStatus.ERROR, "policy exploded")


def test_registry_names() -> None:
    assert set(POLICIES) == {"weighted", "adaptive", "round-robin", "random", "plain-net-latency"}


# --- baselines ---------------------------------------------------------------------------


def test_round_robin_rotates_per_traits_key_over_live_candidates() -> None:
    view = ExecutorView()
    for executor_id in ("b", "a", "c"):
        add(view, executor_id)
    add(view, "t", traits=TEXT)
    state = PolicyState()
    one = request(top_k=1)
    firsts = [ranked(run(view, one, policy="round-robin", state=state))[0] for _ in range(4)]
    assert firsts == ["a", "b", "c", "a"]
    # Another traits key has its own counter.
    text = request(top_k=1, traits=TEXT)
    assert ranked(run(view, text, policy="round-robin", state=state)) == ["t"]
    reply = run(view, request(top_k=2), policy="round-robin", state=state)
    assert ranked(reply) == ["b", "c"]
    assert [c.score for c in reply.candidates] == [2.0, 1.0]
    # A stale executor drops out of the rotation.
    view.apply_status(ExecutorStatus(executor_id="a", model_state=ModelState.END), NOW)
    rotation = [ranked(run(view, one, policy="round-robin", state=state))[0] for _ in range(4)]
    assert sorted(set(rotation)) == ["b", "c"]


def test_random_is_reproducible_distinct_and_covers_everyone() -> None:
    view = ExecutorView()
    for i in range(5):
        add(view, f"e{i}")
    req = request(top_k=3)
    first = [ranked(run(view, req, policy="random", state=PolicyState(random.Random(7))))]
    again = [ranked(run(view, req, policy="random", state=PolicyState(random.Random(7))))]
    assert first == again
    state = PolicyState(random.Random(1))
    seen: Counter[str] = Counter()
    for _ in range(500):
        picked = ranked(run(view, req, policy="random", state=state))
        assert len(set(picked)) == 3
        seen[picked[0]] += 1
    # Uniform first picks: 100 expected each; far outside 50..150 means a bias.
    assert set(seen) == {f"e{i}" for i in range(5)}
    assert all(50 < n < 150 for n in seen.values())


def test_plain_net_latency_orders_by_probe_with_fallback_and_id_ties() -> None:
    view = ExecutorView()
    add(view, "slow", accuracy=1.0, probe_ms=90.0)
    add(view, "b", probe_ms=7.0, delay=1.0)
    add(view, "a", probe_ms=7.0)
    add(view, "unprobed")  # fallback: view median of 7, 7, 90 = 7
    reply = run(view, request(size=5, top_k=4), policy="plain-net-latency")
    assert ranked(reply) == ["a", "b", "unprobed", "slow"]
    assert [c.score for c in reply.candidates] == [-7.0, -7.0, -7.0, -90.0]
    assert [c.estimated_latency_ms for c in reply.candidates] == [7.0, 12.0, 7.0, 90.0]


# --- adaptive ----------------------------------------------------------------------------


def learned_pair() -> ExecutorView:
    """Two executors 5 ms away; "fast" learned 20 ms service time, "slow" 30 ms."""
    view = ExecutorView()
    for executor_id, observed_ms in (("fast", 25.0), ("slow", 35.0)):
        add(view, executor_id, accuracy=0.9, probe_ms=5.0)
        view.apply_latency(
            LatencyMeasurement(
                executor_id=executor_id,
                client_id="me",
                latency_ms=observed_ms,
                source=LatencySource.OBSERVED,
            ),
            now=NOW,
        )
    return view


def smooth(estimate: float) -> float:
    """Hand version of the adaptive latency score for the tests below: piecewise linear
    through the bucket bounds, then 1/9 * 1020 / estimate."""
    points = [(10.0, 1.0)] + [(b, 1 - (i + 1) / 9) for i, b in enumerate(LATENCY_BUCKETS_MS[1:])]
    if estimate <= 10:
        return 1.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if estimate <= x1:
            return y0 + (y1 - y0) * (estimate - x0) / (x1 - x0)
    return 1020 / 9 / estimate


def test_adaptive_idle_fast_executor_wins() -> None:
    reply = run(learned_pair(), request(latency=1.0, accuracy=0.0), policy="adaptive")
    assert ranked(reply) == ["fast", "slow"]
    assert [c.estimated_latency_ms for c in reply.candidates] == [25.0, 35.0]
    assert [c.score for c in reply.candidates] == pytest.approx([smooth(25.0), smooth(35.0)])


def test_adaptive_loaded_fast_executor_loses_to_idle_slower_one() -> None:
    view = learned_pair()
    view.apply_status(
        ExecutorStatus(executor_id="fast", model_state=ModelState.AVAILABLE, in_flight=3), NOW
    )
    reply = run(view, request(latency=1.0, accuracy=0.0), policy="adaptive")
    # One sample at load 0 each: base = slope = the sample (serial prior), so
    # fast: 5 + 20 + 20 * 3 = 85 ms; slow: 5 + 30 = 35 ms.
    assert ranked(reply) == ["slow", "fast"]
    assert [c.estimated_latency_ms for c in reply.candidates] == [35.0, 85.0]
    assert [c.score for c in reply.candidates] == pytest.approx([smooth(35.0), smooth(85.0)])
    # The prototype's weighted score sees neither load nor service time: a pure tie.
    assert ranked(run(view, request(latency=1.0, accuracy=0.0))) == ["fast", "slow"]


def test_adaptive_counts_routers_outstanding_requests() -> None:
    view = learned_pair()
    view.set_outstanding("fast", 1, source="router-1")
    reply = run(view, request(latency=1.0, accuracy=0.0), policy="adaptive")
    # fast: 5 + 20 * 2 = 45 > slow's 35.
    assert ranked(reply) == ["slow", "fast"]
    assert reply.candidates[1].estimated_latency_ms == 45.0


def test_adaptive_unlearned_executor_uses_lowest_base_and_median_slope() -> None:
    view = learned_pair()
    add(view, "new", accuracy=0.9, probe_ms=5.0, delay=1.0)
    reply = run(view, request(latency=1.0, accuracy=0.0, size=4), policy="adaptive")
    estimates = {c.executor_id: c.estimated_latency_ms for c in reply.candidates}
    # Lowest learned base (20), plus 1 ms * 4 elements, plus 5 ms network.
    assert estimates == {"fast": 25.0, "slow": 35.0, "new": 29.0}
    # Loaded, it pays the median learned slope (of 20 and 30) per request.
    view.apply_status(
        ExecutorStatus(executor_id="new", model_state=ModelState.AVAILABLE, in_flight=2), NOW
    )
    reply = run(view, request(latency=1.0, accuracy=0.0, size=4), policy="adaptive")
    estimates = {c.executor_id: c.estimated_latency_ms for c in reply.candidates}
    assert estimates["new"] == 29.0 + 2 * 25.0


def test_adaptive_cold_view_uses_the_defaults() -> None:
    view = ExecutorView(default_service_ms=4.0, default_load_slope_ms=3.0)
    add(view, "a", probe_ms=10.0, delay=2.0)
    view.set_outstanding("a", 5, source="router")
    reply = run(view, request(size=10), policy="adaptive")
    # 10 ms network + 4 ms base + 2 ms * 10 elements + 3 ms * 5 in the system.
    assert reply.candidates[0].estimated_latency_ms == 49.0


def test_adaptive_load_penalty_is_additive_not_scaled_by_input_size() -> None:
    # The prototype's SlowGood and FastBad at a hundredth of the time, 1000 elements:
    # 800 resp. 10 ms of size term, 7 resp. 1 ms per request in flight (their beta).
    view = ExecutorView()
    add(view, "slow", accuracy=1.0, delay=0.8, probe_ms=0.0)
    add(view, "fast", accuracy=0.5, delay=0.01, probe_ms=0.0)
    for executor_id, base, slope in (("slow", 2.0, 7.0), ("fast", 0.1, 1.0)):
        # Learned from earlier samples (as the store keeps them): base + slope * load.
        assert view.restore_learned(
            executor_id, {}, None, 10, (5.0, 1.0, base + slope, 1e8, 1e8 * slope)
        )
    view.set_outstanding("fast", 9, source="router")
    view.set_outstanding("slow", 2, source="router")
    reply = run(view, request(latency=1.0, accuracy=0.0, size=1000), policy="adaptive")
    estimates = {c.executor_id: c.estimated_latency_ms for c in reply.candidates}
    # fast: 0.1 + 10 + 1 * 9 = 19.1 (not (0.1 + 10) * 10 = 101); slow: 2 + 800 + 14.
    assert estimates == pytest.approx({"fast": 19.1, "slow": 816.0})
    assert ranked(reply) == ["fast", "slow"]


def test_adaptive_saturation_keeps_latency_in_the_score() -> None:
    view = ExecutorView()
    add(view, "busy", accuracy=0.9, probe_ms=1100.0)
    add(view, "busier", accuracy=0.95, probe_ms=5000.0)
    add(view, "near", accuracy=0.5, probe_ms=1.0)
    view.restore_learned("near", {}, 0.0, 1)  # base 0 for everyone
    reply = run(view, request(latency=0.5, accuracy=0.5), policy="adaptive")
    # Above 1020 ms the score is 1/9 * 1020 / estimate, not 0: 1.1 s beats 5 s although
    # the 5 s one is more accurate (0 for both would have ranked "busier" first).
    assert ranked(reply) == ["near", "busy", "busier"]
    assert [c.score for c in reply.candidates] == pytest.approx(
        [
            0.5 * 1.0 + 0.5 * 0.5 / 0.95,
            0.5 * 1020 / 9 / 1100 + 0.5 * 0.9 / 0.95,
            0.5 * 1020 / 9 / 5000 + 0.5,
        ]
    )
    # Latency only, all saturated: strictly by estimate.
    view.remove_executor("near")
    add(view, "far", accuracy=0.1, probe_ms=3000.0)
    reply = run(view, request(latency=1.0, accuracy=0.0), policy="adaptive")
    assert ranked(reply) == ["busy", "far", "busier"]
    assert all(c.score > 0 for c in reply.candidates)


@pytest.mark.parametrize(
    ("probe_ms", "expected_score"),
    [(1020.0, 1 / 9), (1020.0 + 1e-9, 1 / 9), (2040.0, 1 / 18), (10_200.0, 1 / 90)],
)
def test_adaptive_latency_score_is_continuous_past_the_last_bound(
    probe_ms: float, expected_score: float
) -> None:
    view = ExecutorView(default_service_ms=0.0)  # the estimate is the probe alone
    add(view, "a", probe_ms=probe_ms)
    reply = run(view, request(latency=1.0, accuracy=0.0), policy="adaptive")
    assert reply.candidates[0].estimated_latency_ms == pytest.approx(probe_ms)
    assert reply.candidates[0].score == pytest.approx(expected_score)


def test_adaptive_learning_changes_the_choice() -> None:
    view = learned_pair()
    for _ in range(30):  # "fast" gets consistently slow answers: 5 + 95 ms
        view.apply_latency(
            LatencyMeasurement(
                executor_id="fast",
                client_id="me",
                latency_ms=100.0,
                source=LatencySource.OBSERVED,
            ),
            now=NOW,
        )
    reply = run(view, request(latency=1.0, accuracy=0.0), policy="adaptive")
    assert ranked(reply) == ["slow", "fast"]
    assert reply.candidates[1].estimated_latency_ms == pytest.approx(100.0, abs=0.1)


def test_adaptive_slo_filters() -> None:
    view = learned_pair()
    add(view, "accurate", accuracy=0.99, probe_ms=5.0)  # unlearned: 5 + lowest base 20
    view.apply_status(
        ExecutorStatus(executor_id="fast", model_state=ModelState.AVAILABLE, in_flight=3), NOW
    )
    # fast 85 ms, slow 35 ms, accurate 25 ms.

    reply = run(view, request(slo=Slo(max_latency_ms=50.0), top_k=5), policy="adaptive")
    assert sorted(ranked(reply)) == ["accurate", "slow"]

    reply = run(view, request(slo=Slo(min_accuracy=0.95), top_k=5), policy="adaptive")
    assert ranked(reply) == ["accurate"]

    reply = run(view, request(slo=Slo(min_accuracy=0.995)), policy="adaptive")
    assert (reply.status, reply.eliminated_by) == (
        SelectionStatus.NO_CANDIDATE,
        "slo.min_accuracy",
    )

    reply = run(view, request(slo=Slo(max_latency_ms=24.0)), policy="adaptive")
    assert reply.eliminated_by == "slo.max_latency_ms"

    # Load counts against the SLO: "slow" passes 40 ms idle, not with 2 in flight
    # (35 + 30 * 2 = 95).
    reply = run(view, request(slo=Slo(max_latency_ms=40.0), top_k=5), policy="adaptive")
    assert sorted(ranked(reply)) == ["accurate", "slow"]
    view.set_outstanding("slow", 2, source="router")
    reply = run(view, request(slo=Slo(max_latency_ms=40.0), top_k=5), policy="adaptive")
    assert ranked(reply) == ["accurate"]

    # Accuracy passes for "accurate" only, whose 25 ms then breaks the latency SLO.
    both = Slo(min_accuracy=0.95, max_latency_ms=24.0)
    reply = run(view, request(slo=both), policy="adaptive")
    assert reply.eliminated_by == "slo.max_latency_ms"


def test_adaptive_accuracy_normaliser_is_best_survivor_of_the_slo() -> None:
    view = ExecutorView()
    add(view, "best-but-far", accuracy=1.0, probe_ms=500.0)
    add(view, "b", accuracy=0.8, probe_ms=10.0)
    add(view, "c", accuracy=0.4, probe_ms=10.0)
    view.apply_latency(
        LatencyMeasurement(
            executor_id="b",
            client_id="me",
            latency_ms=20.0,
            source=LatencySource.OBSERVED,
        ),
        now=NOW,
    )  # every unlearned executor now assumes b's 10 ms service time
    reply = run(view, request(slo=Slo(max_latency_ms=100.0)), policy="adaptive")
    assert ranked(reply) == ["b", "c"]
    assert [c.score for c in reply.candidates] == pytest.approx(
        [0.5 * smooth(20.0) + 0.5 * 1.0, 0.5 * smooth(20.0) + 0.5 * 0.4 / 0.8]
    )


def test_weighted_ignores_slo() -> None:
    view = learned_pair()
    reply = run(view, request(slo=Slo(min_accuracy=0.99)))
    assert reply.status == SelectionStatus.OK


# --- properties: optimised scans equal naive reference implementations -------------------


def naive_net(view: ExecutorView, entry_id: str, client: str) -> float:
    entry = view.get(entry_id)
    assert entry is not None
    if client in entry.probes:
        return entry.probes[client]
    if entry.probes:
        return statistics.median(entry.probes.values())
    everything = [v for e in view.entries() for v in e.probes.values()]
    return statistics.median(everything) if everything else view.default_latency_ms


def naive_weighted(
    view: ExecutorView, req: SelectionRequest
) -> list[tuple[float, float, float, str]]:
    """The prototype's score written plainly: (score, estimate, accuracy, id), best first."""
    pool = [e for e in view.entries() if e.key == req.traits.key()]
    top = max((e.accuracy for e in pool), default=0.0)
    rows = []
    for e in pool:
        estimate = naive_net(view, e.executor_id, req.client_id) + (
            e.delay_per_element_ms * req.input_size
        )
        latency_score = 0.0
        for i, bound in enumerate(LATENCY_BUCKETS_MS):
            if bound >= estimate:
                latency_score = 1 - i / 9
                break
        accuracy_score = e.accuracy / top if top > 0 else 0.0
        score = req.weights.latency * latency_score + req.weights.accuracy * accuracy_score
        rows.append((score, estimate, e.accuracy, e.executor_id))
    rows.sort(key=lambda r: (-r[0], r[1], -r[2], r[3]))
    return rows


executor_specs = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0]),  # accuracy (ties likely)
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 40.0]),  # delay ms/element
        st.one_of(st.none(), st.sampled_from([0.0, 10.0, 29.5, 60.0, 1020.0, 5000.0])),
        st.booleans(),  # traits: WINE or TEXT
        st.integers(min_value=0, max_value=3),  # in-flight load
    ),
    min_size=1,
    max_size=25,
)
continuous_specs = st.lists(
    st.tuples(
        st.sampled_from([0.3, 0.5, 0.8, 0.95, 1.0]) | st.floats(min_value=0, max_value=1),
        st.sampled_from([0.0, 1.0]) | st.floats(min_value=0, max_value=50),
        st.none() | st.floats(min_value=0, max_value=1500),
        st.booleans(),
        st.integers(min_value=0, max_value=3),
    ),
    min_size=1,
    max_size=25,
)
weights = st.tuples(
    st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]) | st.floats(min_value=0, max_value=1),
    st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]) | st.floats(min_value=0, max_value=1),
)


def build(
    specs: list[tuple[float, float, float | None, bool, int]], view: ExecutorView | None = None
) -> ExecutorView:
    view = view if view is not None else ExecutorView()
    for n, (accuracy, delay, probe_ms, wine, load) in enumerate(specs):
        add(
            view,
            f"e{n:02d}",
            accuracy=accuracy,
            delay=delay,
            probe_ms=probe_ms,
            traits=WINE if wine else TEXT,
        )
        view.set_outstanding(f"e{n:02d}", load)
    return view


@settings(max_examples=300, deadline=None)
@given(
    specs=executor_specs,
    w=weights,
    size=st.sampled_from([0, 1, 10, 1000]),
    top_k=st.integers(min_value=1, max_value=6),
)
def test_weighted_equals_naive_prototype_score(
    specs: list[tuple[float, float, float | None, bool, int]],
    w: tuple[float, float],
    size: int,
    top_k: int,
) -> None:
    view = build(specs)
    req = request(latency=w[0], accuracy=w[1], size=size, top_k=top_k)
    reply = run(view, req)
    expected = naive_weighted(view, req)
    if not expected:
        assert reply.eliminated_by == "traits"
        return
    assert ranked(reply) == [r[3] for r in expected[:top_k]]
    for candidate, row in zip(reply.candidates, expected, strict=False):
        assert candidate.score == pytest.approx(row[0], abs=1e-12)
        assert candidate.estimated_latency_ms == pytest.approx(row[1])
        # Every candidate passed the hard filter, and scores are bounded by the weights.
        entry = view.get(candidate.executor_id)
        assert entry is not None
        assert entry.key == WINE.key()
        assert 0.0 <= candidate.score <= w[0] + w[1]


@settings(max_examples=400, deadline=None)
@given(
    specs=executor_specs | continuous_specs,
    w=weights,
    size=st.sampled_from([0, 1, 10]),
    top_k=st.integers(min_value=1, max_value=6),
    max_latency=st.none() | st.sampled_from([15.0, 50.0, 500.0]),
    min_accuracy=st.none() | st.sampled_from([0.5, 0.9]),
)
def test_adaptive_equals_naive_estimate_filters_and_score(
    specs: list[tuple[float, float, float | None, bool, int]],
    w: tuple[float, float],
    size: int,
    top_k: int,
    max_latency: float | None,
    min_accuracy: float | None,
) -> None:
    view = build(specs, ExecutorView(default_service_ms=3.0, default_load_slope_ms=7.0))
    # Some executors learned (base, slope) from one sample at load 0: both 10n + 5.
    for n in range(0, len(specs), 3):
        view.restore_learned(f"e{n:02d}", {}, 10.0 * n + 5.0, 1)
    slo = Slo(max_latency_ms=max_latency, min_accuracy=min_accuracy)
    req = request(latency=w[0], accuracy=w[1], size=size, top_k=top_k, slo=slo)
    reply = run(view, req, policy="adaptive")

    pool = [e for e in view.entries() if e.key == WINE.key()]
    learned = [10.0 * n + 5.0 for n in range(0, len(specs), 3)]
    # Unlearned executors: the lowest learned base and the median learned slope.
    rows = []
    for n, e in enumerate(view.entries()):
        if e.key != WINE.key():
            continue
        if n % 3 == 0:
            base = slope = 10.0 * n + 5.0
        else:
            base, slope = min(learned), statistics.median(learned)
        estimate = (
            naive_net(view, e.executor_id, "me")
            + base
            + e.delay_per_element_ms * size
            + slope * e.load
        )
        if min_accuracy is not None and e.accuracy < min_accuracy:
            continue
        if max_latency is not None and estimate > max_latency:
            continue
        rows.append((estimate, e))
    if not pool:
        assert reply.eliminated_by == "traits"
        return
    if not rows:
        assert reply.status == SelectionStatus.NO_CANDIDATE
        assert reply.eliminated_by in ("slo.min_accuracy", "slo.max_latency_ms")
        return
    top = max(e.accuracy for _, e in rows)
    scored = [
        (
            w[0] * smooth(est) + w[1] * (e.accuracy / top if top else 0.0),
            est,
            e.accuracy,
            e.executor_id,
        )
        for est, e in rows
    ]
    scored.sort(key=lambda r: (-r[0], r[1], -r[2], r[3]))
    got = [(c.score, c.executor_id) for c in reply.candidates]
    assert [s for s, _ in got] == pytest.approx([r[0] for r in scored[:top_k]], abs=1e-9)
    # Ids must match too unless two scores differ only by rounding.
    close = any(0 < abs(a[0] - b[0]) < 1e-9 for a, b in itertools.pairwise(scored))
    assume(not close)
    assert [i for _, i in got] == [r[3] for r in scored[:top_k]]


def test_policies_accept_an_empty_set() -> None:
    view = ExecutorView()
    empty = CandidateSet(WINE.key(), ())
    for policy in POLICIES.values():
        assert policy(request(), empty, view, NOW, PolicyState()) == []
