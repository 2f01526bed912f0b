"""The quick-start overload accounting: capacity from the profiles, answer rate, errors."""

from __future__ import annotations

import math

import pytest

from mulambda.emulator.profiles import profile_by_name
from mulambda.harness.quickstart import OverloadTally, capacities, capacity_per_s, render

pytestmark = pytest.mark.unit


def test_capacity_is_one_over_beta_times_the_time_scale() -> None:
    caps = capacities([profile_by_name(n) for n in ("FastBad", "MidOK", "SlowGood")], 0.2)
    assert caps["FastBad"] == pytest.approx(50.0)
    assert caps["MidOK"] == pytest.approx(16.67, abs=0.01)
    assert caps["SlowGood"] == pytest.approx(7.14, abs=0.01)
    assert sum(caps.values()) == pytest.approx(73.8, abs=0.1)


def test_a_model_whose_delay_ignores_load_has_no_capacity_bound() -> None:
    assert capacity_per_s(profile_by_name("FastBad"), 0.0) == math.inf


def _ok(rid: str, executor: str = "local-FastBad") -> dict[str, object]:
    return {"request_id": rid, "status": "ok", "executor_id": executor}


def _error(rid: str, reason: str) -> dict[str, object]:
    return {"request_id": rid, "status": "error", "error": reason}


def test_rate_counts_over_the_window_or_the_drain_whichever_is_longer() -> None:
    tally = OverloadTally()
    for i in range(11):
        tally.sent(f"r{i}", float(i))  # window 10 s
    for i in range(10):
        tally.result(_ok(f"r{i}"), i + 0.5)
    fast = tally.figures(capacity=2.0)
    assert fast.window_s == 10.0
    assert fast.span_s == 10.0
    assert fast.ok_per_s == pytest.approx(1.0)
    assert fast.ok_share_of_capacity == pytest.approx(0.5)
    assert fast.unanswered == 1
    tally.result(_ok("r10"), 30.0)  # drained 20 s after the last send
    late = tally.figures(capacity=2.0)
    assert late.span_s == 30.0
    assert late.ok_per_s == pytest.approx(11 / 30)


def test_errors_latency_reasons_and_executor_split() -> None:
    tally = OverloadTally()
    for i in range(4):
        tally.sent(f"r{i}", 100.0)
    tally.result(_ok("r0", "local-MidOK"), 100.2)
    tally.result(_error("r1", "router overloaded: expected wait 12.5 s"), 100.01)
    tally.result(_error("r2", "router overloaded: expected wait 3.1 s"), 100.03)
    tally.result({**_error("r3", "all 1 candidate(s) failed"), "executor_id": None}, 110.0)
    assert tally.result(_ok("stranger"), 101.0) is False  # not this run's
    assert tally.result(_ok("r0"), 100.5) is True  # a duplicate
    figures = tally.figures(capacity=10.0)
    assert (figures.ok, figures.errors, figures.duplicates, figures.unanswered) == (1, 3, 1, 0)
    assert figures.error_latency_p50_s == pytest.approx(0.03)
    assert figures.error_latency_p99_s == pytest.approx(10.0)
    assert figures.ok_by_executor == {"local-MidOK": 1}
    assert figures.errors_by_executor == {"-": 3}
    assert figures.error_reasons[0] == ("router overloaded: expected wait N s", 2)
    text = render(figures, {"MidOK": 10.0})
    assert "error latency p50 30 ms" in text
    assert figures.to_json()["error_reasons"][0] == ["router overloaded: expected wait N s", 2]


def test_no_errors_and_no_answers_render() -> None:
    tally = OverloadTally()
    tally.sent("r0", 0.0)
    figures = tally.figures(capacity=73.8)
    assert figures.ok_per_s == 0.0
    assert figures.error_latency_p50_s is None
    assert "p50 -" in render(figures, {})
