"""The evaluation's scoring: utility, oracle, SLO outcome, ramps, intervals and ties."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import pytest

from mulambda.emulator.profiles import profile_by_name
from mulambda.harness.evaluation import (
    Load,
    Offer,
    compare,
    ecdf,
    mean_interval,
    oracle_for_utility,
    predicted_service_ms,
    ramp_offsets,
    simulate_slo_oracle,
    slo_outcome,
    utility,
)

pytestmark = pytest.mark.unit

FAST_BAD = profile_by_name("FastBad")  # D 10, alpha 0.001, beta 0.1, J 5
SLOW_GOOD = profile_by_name("SlowGood")  # D 200, alpha 0.08, beta 0.7, J 60


def test_utility_is_the_prototype_score_of_what_was_got() -> None:
    # 25 ms is in the second bucket (<= 30): 1 - 1/9.
    assert utility(0.5, 0.5, 25.0, 0.4, 0.8) == pytest.approx(0.5 * (8 / 9) + 0.5 * 0.5)
    assert utility(1.0, 0.0, 2000.0, 1.0, 1.0) == 0.0
    assert utility(0.0, 1.0, 1.0, 0.3, 0.0) == 0.0  # nothing accurate on offer


def test_predicted_service_below_and_at_capacity() -> None:
    assert predicted_service_ms(FAST_BAD, 10, Load(2, 0), 1.0) == pytest.approx(10 + 10 + 200 + 2.5)
    limited = dataclasses.replace(FAST_BAD, capacity=2, beta=0.0, J=0.0, alpha=0.0)
    # Two in service of 10 ms each, one waiting: wait for 2 completions at 2 per 10 ms.
    assert predicted_service_ms(limited, 0, Load(2, 1), 1.0) == pytest.approx(2 * 10 / 2 + 10)
    assert predicted_service_ms(limited, 0, Load(1, 0), 0.5) == pytest.approx(5)


def test_utility_oracle_weighs_load_and_accuracy() -> None:
    fast = Offer("fast", FAST_BAD, 0.0, FAST_BAD.accuracy)
    slow = Offer("slow", SLOW_GOOD, 0.0, SLOW_GOOD.accuracy)
    oracle = functools.partial(oracle_for_utility, input_size=1, overhead_ms=2.0, time_scale=0.1)
    chosen, rtt, score = oracle([fast, slow], {}, w_latency=0.0, w_accuracy=1.0)
    assert (chosen, score) == ("slow", 1.0)
    assert rtt == pytest.approx(2.0 + SLOW_GOOD.mean_delay_s(1, 0, time_scale=0.1) * 1000)
    chosen, _, score = oracle([fast, slow], {}, w_latency=1.0, w_accuracy=0.0)
    assert chosen == "fast"
    # A loaded fast executor loses to an idle slow one on latency.
    loads = {"fast": Load(serving=10)}
    chosen, _, _ = oracle([fast, slow], loads, w_latency=1.0, w_accuracy=0.0)
    assert chosen == "slow"
    with pytest.raises(ValueError, match="at least one offer"):
        oracle([], {}, w_latency=1.0, w_accuracy=0.0)


def test_slo_oracle_fills_the_accurate_executor_then_spills() -> None:
    accurate = dataclasses.replace(SLOW_GOOD, D=100, alpha=0, beta=0, J=0, capacity=1)
    quick = dataclasses.replace(FAST_BAD, D=10, alpha=0, beta=0, J=0, capacity=1)
    offers = [Offer("acc", accurate, 0.0, 0.95), Offer("quick", quick, 0.0, 0.6)]
    oracle = functools.partial(
        simulate_slo_oracle, offers=offers, input_size=0, overhead_ms=5.0, time_scale=1.0
    )
    # Three requests 10 ms apart: the first takes "acc" (105 ms), the second would wait
    # 90 ms there (195 ms > 150), so "quick"; the third finds "quick" free again.
    choices = oracle([0.0, 0.01, 0.02], max_latency_ms=150, min_accuracy=0.5)
    assert [c.executor_id for c in choices] == ["acc", "quick", "quick"]
    assert [c.rtt_ms for c in choices] == pytest.approx([105, 15, 15])
    assert all(c.attained for c in choices)
    # Nobody accurate enough: each goes where it is answered soonest, a violation.
    strict = oracle([0.0, 0.01], max_latency_ms=150, min_accuracy=0.99)
    assert [(c.executor_id, c.attained) for c in strict] == [("quick", False), ("quick", False)]
    # Queueing: with one slot, the second request waits for the first to finish.
    alone = simulate_slo_oracle(
        [0.0, 0.0], [offers[0]], input_size=0, overhead_ms=0.0, max_latency_ms=150,
        min_accuracy=0.0, time_scale=1.0,
    )  # fmt: skip
    assert [c.rtt_ms for c in alone] == pytest.approx([100, 200])
    assert [c.attained for c in alone] == [True, False]
    with pytest.raises(ValueError, match="at least one offer"):
        simulate_slo_oracle([0.0], [], input_size=0, overhead_ms=0, max_latency_ms=1,
                            min_accuracy=0, time_scale=1)  # fmt: skip


def test_slo_outcome_counts_late_and_failed_as_zero() -> None:
    assert slo_outcome(True, 90, 0.8, 100, 0.5) == (True, 0.8)
    assert slo_outcome(True, 90, 0.4, 100, 0.5) == (False, 0.4)  # in time, too inaccurate
    assert slo_outcome(True, 110, 0.8, 100, 0.5) == (False, 0.0)
    assert slo_outcome(False, math.nan, 0.0, 100, 0.5) == (False, 0.0)


def test_ramp_offsets_integrate_the_rate() -> None:
    flat = ramp_offsets(10, 10, 2)
    assert len(flat) == 20
    assert flat[:3] == pytest.approx([0.0, 0.1, 0.2])
    ramp = ramp_offsets(10, 30, 4)  # 80 requests, gaps shrinking from 1/10 to 1/30 s
    assert len(ramp) == 80
    gaps = [b - a for a, b in itertools.pairwise(ramp)]
    assert all(g2 < g1 for g1, g2 in itertools.pairwise(gaps))
    assert ramp[-1] < 4
    with pytest.raises(ValueError, match="positive"):
        ramp_offsets(0, 1, 1)


def test_mean_interval_uses_student_t() -> None:
    interval = mean_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0
    assert interval.half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert (interval.low, interval.high) == pytest.approx((2 - interval.half, 2 + interval.half))
    assert math.isnan(mean_interval([1.0]).half)
    assert mean_interval([]).n == 0


def test_differences_inside_the_noise_are_ties() -> None:
    assert compare([0.9, 0.91, 0.92], [0.5, 0.51, 0.52]) == "better"
    assert compare([0.5, 0.51, 0.52], [0.9, 0.91, 0.92]) == "worse"
    assert compare([0.5, 0.9, 0.7], [0.6, 0.65, 0.62]) == "tie"
    assert compare([0.7, 0.7], [0.7, 0.7]) == "tie"
    assert compare([0.8, 0.8], [0.7, 0.7]) == "better"
    assert compare([0.9], [0.1]) == "tie"  # one repeat: no interval, no verdict


def test_ecdf_skips_non_finite_values() -> None:
    assert ecdf([3.0, math.nan, 1.0, 2.0]) == ([1.0, 2.0, 3.0], [1 / 3, 2 / 3, 1.0])
