"""What observed latencies teach: the service-time fit, its fallbacks and its restore.

Through the view (which turns each observation into a sample at its dispatch load) and,
for the pure pieces, directly.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mulambda.errors import ConfigurationError, DecodeError
from mulambda.selection.learning import (
    ServiceFit,
    ServiceLearning,
    as_fit,
    fitted_line,
    updated_fit,
)
from mulambda.selection.view import ExecutorView
from tests.unit.selection.records import observed, probe, reg, status

pytestmark = pytest.mark.unit


class Entry:
    """The fields ServiceLearning writes, as a view entry has them."""

    def __init__(self) -> None:
        self.observed_ms: dict[str, float] | None = None
        self.service_ms: float | None = None
        self.load_slope_ms: float = 0.0
        self.service_fit: ServiceFit | None = None
        self.service_samples: int = 0


# --- through the view ------------------------------------------------------------------


def test_observed_latency_teaches_service_time_net_of_network_and_size() -> None:
    view = ExecutorView(ewma_alpha=0.5)
    view.apply_registration(reg("a", delay=2.0), now=0.0)
    view.apply_latency(probe("a", "c", 10.0), now=0.0)
    entry = view.get("a")
    assert entry is not None

    # 70 ms observed, 10 ms network, 5 elements * 2 ms/element: a 50 ms sample at load
    # 0. One sample has no spread in load: the slope is the serial prior, the mean
    # sample per request in the system, 50 / (1 + 0).
    view.apply_latency(observed("a", "c", 70.0, size=5), now=1.0)
    assert (entry.service_ms, entry.load_slope_ms) == (50.0, 50.0)
    assert entry.service_fit == ServiceFit(1.0, 0.0, 50.0, 0.0, 0.0)
    assert entry.observed_ms == {"c": 70.0}

    # A 110 ms sample at load 1. Weights 1/2 and 1: weight 1.5, mean load 2/3, mean
    # sample 90, Sxx = 1 * (1 - 2/3) = 1/3, Sxy = 1 * (110 - 90) = 20; prior
    # 90 / (1 + 2/3) = 54; slope (20 + 54) / (1/3 + 1) = 55.5; base 90 - 55.5 * 2/3 = 53.
    view.apply_status(status("a", in_flight=1), now=1.0)
    view.apply_latency(observed("a", "c", 130.0, size=5), now=2.0)
    assert entry.service_fit is not None
    assert entry.service_fit == pytest.approx((1.5, 2 / 3, 90.0, 1 / 3, 20.0))
    assert entry.load_slope_ms == pytest.approx(55.5)
    assert entry.service_ms == pytest.approx(53.0)
    assert entry.service_samples == 2
    assert entry.observed_ms == {"c": 100.0}  # 70 + 0.5 * (130 - 70)


def test_service_fit_recovers_an_additive_load_penalty_exactly() -> None:
    # Noiseless samples of 5 + 3 * load, as an executor serving requests side by side:
    # least squares is exact on a line whatever the weights (prior weight ~0).
    view = ExecutorView(ewma_alpha=0.3, slope_prior_weight=1e-12)
    view.apply_registration(reg("a", delay=0.5), now=0.0)
    view.apply_latency(probe("a", "c", 10.0), now=0.0)
    entry = view.get("a")
    assert entry is not None
    for n, load in enumerate([0, 2, 1, 4, 3, 7, 5]):
        view.apply_status(status("a", in_flight=load), now=float(n))
        # 10 ms network + 0.5 ms * 100 elements + 5 ms + 3 ms per request in the system.
        view.apply_latency(observed("a", "c", 10.0 + 50.0 + 5.0 + 3.0 * load, size=100), n)
    assert entry.service_ms == pytest.approx(5.0)
    assert entry.load_slope_ms == pytest.approx(3.0)


def test_service_fit_without_spread_keeps_the_mean_at_the_mean_load() -> None:
    view = ExecutorView(ewma_alpha=0.5)
    view.apply_registration(reg("a"), now=0.0)
    view.apply_latency(probe("a", "c", 0.0), now=0.0)
    view.apply_status(status("a", in_flight=4), now=0.0)
    entry = view.get("a")
    assert entry is not None
    for n in range(20):
        view.apply_latency(observed("a", "c", 100.0), now=float(n))
    # Always at load 4: slope = prior = 100 / (1 + 4) = 20, base = 100 - 20 * 4 = 20, so
    # the estimate at load 4 is the 100 ms seen there.
    assert entry.load_slope_ms == pytest.approx(20.0)
    assert entry.service_ms is not None
    assert entry.service_ms == pytest.approx(20.0)
    assert entry.service_ms + 4 * entry.load_slope_ms == pytest.approx(100.0)


def test_service_fit_never_has_a_negative_slope_or_base() -> None:
    view = ExecutorView(ewma_alpha=0.5, slope_prior_weight=1e-12)
    view.apply_registration(reg("a"), now=0.0)
    view.apply_latency(probe("a", "c", 0.0), now=0.0)
    entry = view.get("a")
    assert entry is not None
    # Faster under load (noise, or load that was not there): slope 0, base the mean.
    for n, (load, ms) in enumerate([(0, 40.0), (4, 20.0)]):
        view.apply_status(status("a", in_flight=load), now=float(n))
        view.apply_latency(observed("a", "c", ms), now=float(n))
    assert entry.load_slope_ms == 0.0
    fit = entry.service_fit
    assert fit is not None
    assert entry.service_ms == pytest.approx(fit.service_mean)

    # A steep line through a negative intercept: the base is clamped at 0 and the line
    # goes through the origin and the mean sample instead.
    view.apply_registration(reg("b"), now=0.0)
    view.apply_latency(probe("b", "c", 0.0), now=0.0)
    b = view.get("b")
    assert b is not None
    for n, (load, ms) in enumerate([(2, 10.0), (4, 50.0)]):
        view.apply_status(status("b", in_flight=load), now=float(n))
        view.apply_latency(observed("b", "c", ms), now=float(n))
    fit = b.service_fit
    assert fit is not None
    assert b.service_ms == 0.0
    assert b.load_slope_ms == pytest.approx(fit.service_mean / fit.load_mean)


def test_observed_latency_below_network_gives_zero_service_time() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), now=0.0)
    view.apply_latency(probe("a", "c", 30.0), now=0.0)
    view.apply_latency(observed("a", "c", 20.0), now=0.0)
    entry = view.get("a")
    assert entry is not None
    assert (entry.service_ms, entry.load_slope_ms) == (0.0, 0.0)


def test_observed_latency_without_probe_uses_fallback_network() -> None:
    view = ExecutorView(default_latency_ms=15.0, default_service_ms=3.0)
    view.apply_registration(reg("a"), now=0.0)
    assert view.fallback_service_ms() == 3.0
    view.apply_latency(observed("a", "c", 40.0), now=0.0)
    entry = view.get("a")
    assert entry is not None
    assert entry.service_ms == 25.0


def test_fallbacks_are_the_lowest_base_and_the_median_slope() -> None:
    view = ExecutorView(default_service_ms=7.0, default_load_slope_ms=1.5)
    assert (view.fallback_service_ms(), view.fallback_load_slope_ms()) == (7.0, 1.5)
    for executor_id, ms in (("a", 30.0), ("b", 12.0), ("c", 50.0)):
        view.apply_registration(reg(executor_id), now=0.0)
        view.apply_latency(probe(executor_id, "c", 0.0), now=0.0)
        view.apply_latency(observed(executor_id, "c", ms), now=0.0)
    # Single samples at load 0: base = slope = the sample.
    assert view.fallback_service_ms() == 12.0
    assert view.fallback_load_slope_ms() == 30.0
    view.remove_executor("b")
    assert view.fallback_service_ms() == 30.0
    assert view.fallback_load_slope_ms() == 40.0


def test_restore_learned_puts_back_service_time_and_observed_latencies() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), 0.0)
    view.apply_registration(reg("b"), 0.0)
    assert view.restore_learned("a", {"c": 30.0}, 12.5, 4)
    assert not view.restore_learned("ghost", {}, 1.0, 1)
    entry = view.get("a")
    assert entry is not None
    assert (entry.service_ms, entry.service_samples, entry.observed_ms) == (12.5, 4, {"c": 30.0})
    # Stored before slopes were learned: the serial prior, 12.5 ms per request in the
    # system, as the multiplicative model that stored it assumed (weight = samples, at
    # most 1 / ewma_alpha = 5).
    assert entry.load_slope_ms == 12.5
    assert entry.service_fit == ServiceFit(4.0, 0.0, 12.5, 0.0, 0.0)
    # The learned value feeds the fallback other executors without samples get.
    assert view.fallback_service_ms() == 12.5


def test_restore_learned_with_a_fit_restores_base_and_slope() -> None:
    learned = ExecutorView()
    learned.apply_registration(reg("a"), 0.0)
    learned.apply_latency(probe("a", "c", 0.0), 0.0)
    for n, load in enumerate([0, 3, 1, 5]):
        learned.apply_status(status("a", in_flight=load), float(n))
        learned.apply_latency(observed("a", "c", 8.0 + 4.0 * load), float(n))
    source = learned.get("a")
    assert source is not None
    assert source.service_fit is not None

    view = ExecutorView()
    view.apply_registration(reg("a"), 0.0)
    # As a store would keep it: five plain numbers.
    numbers = [float(v) for v in source.service_fit]
    assert view.restore_learned("a", {}, None, source.service_samples, numbers)
    entry = view.get("a")
    assert entry is not None
    assert entry.service_fit == source.service_fit
    assert (entry.service_ms, entry.load_slope_ms) == (source.service_ms, source.load_slope_ms)
    assert entry.service_samples == 4

    with pytest.raises(DecodeError):
        view.restore_learned("a", {}, None, 1, [1.0, 2.0])
    with pytest.raises(DecodeError):
        view.restore_learned("a", {}, None, 1, [1.0, 0.0, float("nan"), 0.0, 0.0])


@pytest.mark.parametrize(
    "fit",
    [
        [1.0, 0.0],  # not five numbers
        [0, 0, 5, 0, 0],  # no weight
        ["x", 0, 5, 0, 0],  # not a number
        [1.0, 0.0, float("inf"), 0.0, 0.0],
        [1.0, 0.0, 5.0, -1.0, 0.0],  # a negative Sxx
    ],
)
def test_a_malformed_stored_fit_is_refused_and_changes_nothing(fit: list[object]) -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), 0.0)
    view.apply_latency(probe("a", "c", 0.0), 0.0)
    view.apply_latency(observed("a", "c", 20.0), 0.0)
    entry = view.get("a")
    assert entry is not None
    before = (entry.observed_ms, entry.service_fit, entry.service_samples, entry.service_ms)
    with pytest.raises(DecodeError):
        view.restore_learned("a", {"c": 99.0}, 1.0, 7, fit)  # type: ignore[arg-type]
    after = (entry.observed_ms, entry.service_fit, entry.service_samples, entry.service_ms)
    assert after == before
    assert view.fallback_service_ms() == 20.0


# --- the pure pieces -------------------------------------------------------------------


def test_updated_fit_weighs_old_samples_down() -> None:
    first = updated_fit(None, 2.0, 30.0, keep=0.5)
    assert first == ServiceFit(1.0, 2.0, 30.0, 0.0, 0.0)
    # Weights 1/2 and 1: mean load (0.5 * 2 + 4) / 1.5 = 10/3, mean sample 50.
    second = updated_fit(first, 4.0, 60.0, keep=0.5)
    assert second.weight == 1.5
    assert second.load_mean == pytest.approx(2.0 + 2.0 / 1.5)
    assert second.service_mean == pytest.approx(30.0 + 30.0 / 1.5)
    assert second.load_m2 == pytest.approx(2.0 * (4.0 - second.load_mean))
    assert second.cross_m2 == pytest.approx(2.0 * (60.0 - second.service_mean))


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=20), st.floats(min_value=0, max_value=1e4)),
        min_size=1,
        max_size=30,
    ),
    st.floats(min_value=1e-6, max_value=1e3),
)
def test_fitted_line_never_goes_below_zero(samples: list[tuple[int, float]], k: float) -> None:
    fit = None
    for x, y in samples:
        fit = updated_fit(fit, float(x), y, keep=0.8)
    assert fit is not None
    base, slope = fitted_line(fit, k)
    assert base >= 0.0
    assert slope >= 0.0


def test_fitted_line_is_the_serial_prior_without_spread() -> None:
    # One sample: Sxx = Sxy = 0, so the slope is the prior mean / (1 + load) whatever k.
    fit = ServiceFit(1.0, 3.0, 80.0, 0.0, 0.0)
    for k in (1e-9, 1.0, 1e6):
        assert fitted_line(fit, k) == pytest.approx((20.0, 20.0))


def test_as_fit_accepts_five_numbers() -> None:
    assert as_fit([1, 2, 3.5, 0, -1]) == ServiceFit(1.0, 2.0, 3.5, 0.0, -1.0)


def test_learning_keeps_pools_for_the_fallbacks_and_forgets_a_leaver() -> None:
    learning = ServiceLearning(default_service_ms=4.0, default_load_slope_ms=2.0)
    assert (learning.fallback_service_ms(), learning.fallback_load_slope_ms()) == (4.0, 2.0)
    a, b = Entry(), Entry()
    learning.observe(a, "c", 12.0, load=0.0, sample=10.0)
    learning.observe(b, "c", 40.0, load=0.0, sample=30.0)
    assert (a.service_ms, a.load_slope_ms, a.service_samples) == (10.0, 10.0, 1)
    assert a.observed_ms == {"c": 12.0}
    assert learning.fallback_service_ms() == 10.0  # the lowest base
    assert learning.fallback_load_slope_ms() == 20.0  # the median of 10 and 30
    learning.forget(a)
    assert (learning.fallback_service_ms(), learning.fallback_load_slope_ms()) == (30.0, 30.0)
    learning.forget(Entry())  # never learned anything: nothing to forget
    assert learning.fallback_service_ms() == 30.0


def test_restore_without_anything_learned_keeps_the_entry_unlearned() -> None:
    learning = ServiceLearning()
    entry = Entry()
    learning.restore(entry, {}, None, 0)
    assert (entry.observed_ms, entry.service_fit, entry.service_ms) == (None, None, None)
    assert learning.fallback_service_ms() == learning.default_service_ms


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ewma_alpha": 0.0},
        {"ewma_alpha": 1.5},
        {"default_service_ms": float("nan")},
        {"default_service_ms": -1.0},
        {"default_load_slope_ms": -1.0},
        {"slope_prior_weight": 0.0},
        {"slope_prior_weight": float("inf")},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        ServiceLearning(**kwargs)
