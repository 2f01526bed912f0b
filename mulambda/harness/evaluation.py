"""Scoring of selection quality: one utility, an oracle, SLO outcomes, confidence intervals.

Pure arithmetic for ``benchmarks/bench_replay.py`` and ``benchmarks/bench_overload.py``;
nothing here does I/O or reads a clock.

Utility (defined once, the research prototype's own score applied to what a request
*got*)::

    utility = w_latency * bucket_latency_score(rtt_ms) + w_accuracy * accuracy / best

``rtt_ms`` is the request's measured round trip, ``accuracy`` the true accuracy of the
executor that answered it (the result names it) and ``best`` the highest accuracy on
offer among the run's executors;
a failed request scores 0. The bucket score is the prototype's
(:func:`~mulambda.selection.policies.bucket_latency_score`), not a policy's own.

Oracle of the replay (:func:`oracle_for_utility`): for each request, the executor that
maximises the same utility given what the policies cannot know exactly — every
executor's true profile (mean delay ``D + alpha * size + beta * in_flight + J/2``, its
capacity, its accuracy), the exact
number of requests each executor was serving and queueing when this request reached its
executor, and this request's own path overhead (its round trip minus the answering
executor's network delay and service time). It does not know the jitter draw, and it
decides per request as if its choice did not change the others' load, so it is a
reference, not a schedule that is guaranteed achievable: a policy can beat it on a
request by luck of jitter. The overload scenario's oracle (:func:`simulate_slo_oracle`)
instead schedules the same arrivals itself with exact queues.

Statistics: a run's figure is a mean over its requests; repeated runs give a mean with
a Student-t confidence interval, and two policies whose difference's interval contains
0 are tied.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mulambda.emulator.profiles import SyntheticProfile
from mulambda.selection.policies import bucket_latency_score

__all__ = [
    "Interval",
    "Load",
    "Offer",
    "SloChoice",
    "Verdict",
    "compare",
    "ecdf",
    "mean_interval",
    "oracle_for_utility",
    "predicted_service_ms",
    "ramp_offsets",
    "simulate_slo_oracle",
    "slo_outcome",
    "utility",
]


def utility(
    w_latency: float, w_accuracy: float, rtt_ms: float, accuracy: float, best_accuracy: float
) -> float:
    """The prototype's score of what a request got (see the module doc)."""
    accuracy_score = accuracy / best_accuracy if best_accuracy > 0 else 0.0
    return w_latency * bucket_latency_score(rtt_ms) + w_accuracy * accuracy_score


@dataclass(frozen=True, slots=True)
class Load:
    """An executor's requests at one instant: being served and waiting for a slot."""

    serving: int = 0
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class Offer:
    """An executor a request could have gone to, as the oracle knows it."""

    executor_id: str
    profile: SyntheticProfile
    net_ms: float
    """Network delay between client and executor."""
    accuracy: float
    """The accuracy a request answered by it is credited with."""


def predicted_service_ms(
    profile: SyntheticProfile, input_size: int, load: Load, time_scale: float
) -> float:
    """Expected time from arrival at the executor to its answer, given its load.

    Below capacity the request starts at once with ``in_flight = serving``. At capacity
    it first waits for ``waiting + 1`` of the requests ahead to finish, which a pool of
    ``capacity`` slots each busy with a full-load service time ``S`` completes at a rate
    of ``capacity / S``; then it is served at full load.
    """
    capacity = profile.capacity
    if capacity is None or load.serving < capacity:
        return profile.mean_delay_s(input_size, load.serving, time_scale=time_scale) * 1000
    full = profile.mean_delay_s(input_size, capacity - 1, time_scale=time_scale) * 1000
    return (load.waiting + 1) * full / capacity + full


def _predicted_rtt_ms(
    offer: Offer, input_size: int, loads: Mapping[str, Load], overhead_ms: float, scale: float
) -> float:
    load = loads.get(offer.executor_id, Load())
    return overhead_ms + offer.net_ms + predicted_service_ms(offer.profile, input_size, load, scale)


def oracle_for_utility(
    offers: Sequence[Offer],
    loads: Mapping[str, Load],
    *,
    input_size: int,
    overhead_ms: float,
    w_latency: float,
    w_accuracy: float,
    time_scale: float,
) -> tuple[str, float, float]:
    """``(executor_id, predicted rtt ms, utility)`` of the best offer for one request.

    The accuracy normaliser is the best answered accuracy among ``offers``; ties go to
    the lower predicted round trip.
    """
    if not offers:
        raise ValueError("the oracle needs at least one offer")
    best_accuracy = max(o.accuracy for o in offers)
    scored = []
    for offer in offers:
        rtt = _predicted_rtt_ms(offer, input_size, loads, overhead_ms, time_scale)
        score = utility(w_latency, w_accuracy, rtt, offer.accuracy, best_accuracy)
        scored.append((score, -rtt, offer.executor_id))
    score, neg_rtt, executor_id = max(scored, key=lambda row: (row[0], row[1]))
    return executor_id, -neg_rtt, score


@dataclass(frozen=True, slots=True)
class SloChoice:
    """The SLO oracle's decision for one request."""

    executor_id: str
    rtt_ms: float
    accuracy: float
    attained: bool


def simulate_slo_oracle(
    arrivals_s: Sequence[float],
    offers: Sequence[Offer],
    *,
    input_size: int,
    overhead_ms: float,
    max_latency_ms: float,
    min_accuracy: float,
    time_scale: float,
) -> list[SloChoice]:
    """A clairvoyant greedy schedule of the same arrivals: each request, in arrival
    order, goes to the most accurate executor (at least ``min_accuracy``) that answers it
    within ``max_latency_ms``, else to the one that answers soonest (a violation).

    It knows every executor's exact queue (it simulates it: FIFO over ``capacity``
    slots, or unbounded) and its mean service time (``SyntheticProfile.mean_delay_s``,
    ``in_flight`` = slots busy when the request starts), plus ``overhead_ms`` (the
    measured path overhead) and each offer's network delay; its own choices load the
    queues, so the schedule is one a dispatcher could have produced. Greedy, not
    optimal: holding a request back to keep a slot free for a later one is not tried.
    """
    if not offers:
        raise ValueError("the oracle needs at least one offer")
    busy: dict[str, list[float]] = {o.executor_id: [] for o in offers}
    choices = []
    for t in arrivals_s:
        options = []
        for offer in offers:
            ends = busy[offer.executor_id]
            capacity = offer.profile.capacity
            start = max(t, min(ends)) if capacity is not None and len(ends) >= capacity else t
            in_flight = sum(1 for end in ends if end > start)
            if capacity is not None:
                in_flight = min(in_flight, capacity - 1)
            service = offer.profile.mean_delay_s(input_size, in_flight, time_scale=time_scale)
            finish = start + service
            rtt = (finish - t) * 1000 + offer.net_ms + overhead_ms
            attained = rtt <= max_latency_ms and offer.accuracy >= min_accuracy
            options.append((attained, offer.accuracy if attained else -rtt, finish, rtt, offer))
        attained, _, finish, rtt, offer = max(options, key=lambda o: (o[0], o[1]))
        ends = busy[offer.executor_id]
        capacity = offer.profile.capacity
        if capacity is not None and len(ends) >= capacity:
            ends.remove(min(ends))  # the slot it waited for
        else:
            ends[:] = [end for end in ends if end > t]
        ends.append(finish)
        choices.append(SloChoice(offer.executor_id, rtt, offer.accuracy, attained))
    return choices


def slo_outcome(
    ok: bool, rtt_ms: float, accuracy: float, max_latency_ms: float, min_accuracy: float
) -> tuple[bool, float]:
    """``(SLO attained, effective accuracy)`` of one request.

    Attained: answered, within ``max_latency_ms`` and at least ``min_accuracy``.
    Effective accuracy: the answer's accuracy when delivered within ``max_latency_ms``,
    else 0 (late or failed).
    """
    in_time = ok and rtt_ms <= max_latency_ms
    return in_time and accuracy >= min_accuracy, accuracy if in_time else 0.0


def ramp_offsets(start_rps: float, end_rps: float, duration_s: float) -> list[float]:
    """Send times (s from the start) of evenly spaced arrivals whose rate ramps linearly
    from ``start_rps`` to ``end_rps`` over ``duration_s``: the ``k``-th request goes
    when the integral of the rate reaches ``k``."""
    if start_rps <= 0 or end_rps <= 0 or duration_s <= 0:
        raise ValueError("rates and duration must be positive")
    slope = (end_rps - start_rps) / duration_s
    total = (start_rps + end_rps) / 2 * duration_s
    offsets = []
    for k in range(math.floor(total + 1e-9)):
        if abs(slope) < 1e-12:
            offsets.append(k / start_rps)
        else:
            # start * t + slope / 2 * t^2 = k
            offsets.append((-start_rps + math.sqrt(start_rps**2 + 2 * slope * k)) / slope)
    return offsets


# --- statistics ----------------------------------------------------------------------

# Two-sided 95% Student-t quantiles by degrees of freedom (beyond 30: the normal's).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def _t95(df: int) -> float:
    return _T95[df - 1] if df <= len(_T95) else 1.960


@dataclass(frozen=True, slots=True)
class Interval:
    """A mean and its 95% confidence interval over ``n`` repeats (``half`` = half-width;
    NaN with a single repeat)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def as_dict(self) -> dict[str, float]:
        """``{"mean", "ci95", "repeats"}``, the form the result files use."""
        return {"mean": self.mean, "ci95": self.half, "repeats": self.n}


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean of the repeats' figures with a Student-t 95% interval."""
    if not values:
        return Interval(math.nan, math.nan, 0)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, math.nan, 1)
    half = _t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, half, len(values))


Verdict = Literal["better", "worse", "tie"]


def compare(a: Sequence[float], b: Sequence[float]) -> Verdict:
    """``a`` against ``b`` (higher is better): the Welch 95% interval of the difference
    of means decides; when it contains 0 (or there are too few repeats) they tie."""
    if len(a) < 2 or len(b) < 2:
        return "tie"
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return "tie" if diff == 0 else ("better" if diff > 0 else "worse")
    # Welch-Satterthwaite degrees of freedom.
    df = (va + vb) ** 2 / (
        (va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0)
    )
    half = _t95(max(1, math.floor(df))) * se
    if diff - half > 0:
        return "better"
    if diff + half < 0:
        return "worse"
    return "tie"


def ecdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF's points: sorted finite values and the fraction ``<=`` each."""
    xs = sorted(v for v in values if math.isfinite(v))
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]
