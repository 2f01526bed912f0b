"""Selection policies: pure functions that rank an :class:`~mulambda.selection.view.ExecutorView`'s
candidates for one :class:`~mulambda.wire.events.SelectionRequest`.

A policy is called as ``policy(request, candidates, view, now, state)`` where
``candidates`` is the :class:`~mulambda.selection.view.CandidateSet` of live, available executors
with the request's traits (what :meth:`ExecutorView.candidates` returns; never empty
when called from :func:`select`), ``view`` answers latency fallbacks, ``now`` is the
view's clock and ``state`` is the selector's mutable :class:`PolicyState`. It returns up to
``request.top_k`` :class:`~mulambda.wire.events.Candidate` objects, best first, or raises
:class:`~mulambda.errors.NoCandidate` naming the criterion (e.g. ``slo.max_latency_ms``)
that removed the last candidates. :func:`select` wraps all of it into a
:class:`~mulambda.wire.events.SelectionReply`.

Tie-break of the scoring policies (``weighted``, ``adaptive``): higher score, then lower
estimated latency, then higher accuracy, then lower ``executor_id``. Only ``adaptive``
honours ``request.slo`` and ``request.answer_by``; ``weighted`` reproduces the research
prototype exactly. :data:`DEFAULT_POLICY` (``adaptive``) serves requests that name none.

Deadlines: ``answer_by`` is compared with ``now``, so a view whose clock is not epoch
seconds (the selector's is) must not be given requests carrying it.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from heapq import heappush, heapreplace

from mulambda.errors import MulambdaError, NoCandidate
from mulambda.selection.view import CandidateSet, ExecutorEntry, ExecutorView, TraitsKey
from mulambda.wire.events import Candidate, SelectionReply, SelectionRequest, SelectionStatus

LATENCY_BUCKETS_MS: tuple[float, ...] = (10.0, 30.0, 60.0, 90.0, 150.0, 240.0, 390.0, 630.0, 1020.0)
"""The prototype's latency bucket bounds (ms)."""

_N_BUCKETS = len(LATENCY_BUCKETS_MS)
_INF = float("inf")
# Score of bucket i is 1 - i/9; index 9 (above the last bound) scores 0.
_BUCKET_SCORES: tuple[float, ...] = tuple(1.0 - i / _N_BUCKETS for i in range(_N_BUCKETS + 1))
# The adaptive latency score beyond the last bound is (1/9) * 1020 / estimate.
_TAIL = LATENCY_BUCKETS_MS[-1] / _N_BUCKETS


DEFAULT_POLICY = "adaptive"
"""The policy of requests that name none (``MULAMBDA_SELECTOR_DEFAULT_POLICY``): load-aware,
so it keeps serving under overload where the load-blind ``weighted`` piles every request
onto one executor (benchmarks/README.md, ``bench_overload.py`` and
``bench_quickstart_overload.py``)."""


class PolicyState:
    """Mutable state the selector owns across selections (round-robin counters, RNG)."""

    __slots__ = ("rng", "rr_counters")

    def __init__(self, rng: random.Random | None = None) -> None:
        """``rng`` drives the ``random`` policy; pass a seeded one for reproducible runs."""
        # Not security-relevant: spreading load, not choosing secrets.
        self.rng: random.Random = rng if rng is not None else random.Random()  # noqa: S311
        self.rr_counters: dict[TraitsKey, int] = {}
        """Selections served so far per traits key (the round-robin rotation)."""


Policy = Callable[
    [SelectionRequest, CandidateSet, ExecutorView, float, PolicyState],
    list[Candidate],
]
"""``(request, candidates, view, now, state) -> ranked candidates``; see module doc."""


def bucket_latency_score(latency_ms: float) -> float:
    """The prototype's latency score: the first bucket ``i`` whose bound is >= the
    latency scores ``1 - i/9``; above the last bound (1020 ms) 0."""
    return _BUCKET_SCORES[bisect_left(LATENCY_BUCKETS_MS, latency_ms)]


def smooth_latency_score(estimate_ms: float) -> float:
    """A continuous version of the prototype's bucket score (see :func:`weighted`).

    Equal to the bucket score at every bound and linear in between (1 up to 10 ms, 0
    above 1020 ms). The buckets make e.g. 11 ms and 29 ms equal, which hides exactly the
    load-driven differences the adaptive policy estimates; keeping the prototype's
    anchor points keeps the weights' meaning comparable.
    """
    bounds = LATENCY_BUCKETS_MS
    i = bisect_left(bounds, estimate_ms)
    if i == 0:
        return 1.0
    if i >= _N_BUCKETS:
        return 0.0
    lo = bounds[i - 1]
    hi = bounds[i]
    return (_N_BUCKETS - i + (hi - estimate_ms) / (hi - lo)) / _N_BUCKETS


# Validating a plain dict is the fastest *checked* way to build a model (faster than
# both keyword construction and model_construct in pydantic 2.x).
_make_candidate = Candidate.__pydantic_validator__.validate_python


def _candidate(entry: ExecutorEntry, score: float, estimate_ms: float | None) -> Candidate:
    candidate: Candidate = _make_candidate(
        {
            "executor_id": entry.executor_id,
            "endpoint": entry.endpoint,
            "protocol": entry.protocol,
            "model_name": entry.model_name,
            "model_version": entry.model_version,
            "score": score,
            "estimated_latency_ms": estimate_ms,
            "accuracy": entry.accuracy,
        }
    )
    return candidate


def _network_ms(entry: ExecutorEntry, client_id: str, fallback: float) -> float:
    latency = entry.probes.get(client_id)
    if latency is not None:
        return latency
    median = entry.median_probe_ms
    return fallback if median is None else median


_Row = tuple[float, float, float, int, ExecutorEntry]
# (score, -estimate, accuracy, -order, entry): a larger row wins, so ties go to the lower
# estimate, then the higher accuracy, then the lower executor id (``order``); ``order``
# is unique within a set, so the entry itself is never compared.


_POINTS_CACHE: dict[float, tuple[float, ...]] = {}


def _latency_points(w_latency: float) -> tuple[float, ...]:
    """``w_latency * bucket score`` per bucket, memoised (clients reuse few weights)."""
    points = _POINTS_CACHE.get(w_latency)
    if points is None:
        if len(_POINTS_CACHE) >= 1024:
            _POINTS_CACHE.clear()  # bound memory against clients sending many weights
        points = _POINTS_CACHE[w_latency] = tuple(w_latency * s for s in _BUCKET_SCORES)
    return points


def _ranked(heap: list[_Row]) -> list[Candidate]:
    heap.sort(reverse=True)
    return [_candidate(row[4], row[0], -row[1]) for row in heap]


def weighted(
    request: SelectionRequest,
    candidates: CandidateSet,
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """The prototype's weighted score, exactly.

    Estimated latency = client-executor probe latency (or the view's fallback) +
    ``model_data_delay_ms_per_element * input_size``; latency score from the buckets
    (the first bucket ``i`` whose bound is >= the estimate scores ``1 - i/9``, above the
    last bound 0; bounds in :data:`LATENCY_BUCKETS_MS`); accuracy score = accuracy /
    highest accuracy among the candidates (0 for all when that is 0); score = w_latency
    * latency score + w_accuracy * accuracy score.
    """
    if not candidates:
        return []
    if request.weights.latency > request.weights.accuracy:
        return _weighted_by_delay(request, candidates, view.fallback_latency_ms())
    client_id = request.client_id
    size = request.input_size
    top_k = request.top_k
    w_latency = request.weights.latency
    w_accuracy = request.weights.accuracy
    fallback = view.fallback_latency_ms()
    bounds = LATENCY_BUCKETS_MS
    latency_points = _latency_points(w_latency)
    heap: list[_Row] = []
    threshold = -_INF
    threshold_estimate = _INF
    # Hot loop: slots and locals only (see benchmarks/bench_policies.py). Candidates come
    # by descending accuracy, so once even a perfect latency score cannot lift one to
    # the current k-th best score, none of the rest can either; losers build no tuple.
    for e, ratio in zip(candidates.by_accuracy, candidates.ratios, strict=True):
        score = w_accuracy * ratio
        if score + w_latency < threshold:
            break
        latency = e.probes.get(client_id)
        if latency is None:
            latency = e.median_probe_ms
            if latency is None:
                latency = fallback
        estimate = latency + e.delay_per_element_ms * size
        score = latency_points[bisect_left(bounds, estimate)] + score
        # Bucket scores tie often: a tie that is not faster than the k-th best loses too.
        if score <= threshold and (score < threshold or estimate > threshold_estimate):
            continue
        row = (score, -estimate, e.accuracy, -e.order, e)
        if len(heap) < top_k:
            heappush(heap, row)
            if len(heap) == top_k:
                threshold = heap[0][0]
                threshold_estimate = -heap[0][1]
        elif row > heap[0]:
            heapreplace(heap, row)
            threshold = heap[0][0]
            threshold_estimate = -heap[0][1]
    return _ranked(heap)


_BOUNDS_AND_ABOVE = (*LATENCY_BUCKETS_MS, _INF)


def _estimate_limit(
    latency_points: tuple[float, ...], w_accuracy: float, threshold: float
) -> float:
    """The highest latency-estimate lower bound that can still reach ``threshold``.

    A candidate whose estimate is surely above it lands in a bucket whose score, plus a
    perfect accuracy score, is below the threshold.
    """
    limit = -_INF
    for bound, points in zip(_BOUNDS_AND_ABOVE, latency_points, strict=True):
        if points + w_accuracy < threshold:
            break
        limit = bound
    return limit


def _weighted_by_delay(
    request: SelectionRequest, candidates: CandidateSet, fallback: float
) -> list[Candidate]:
    """:func:`weighted` for latency-heavy weights: the same scores and ranking, scanning
    by ascending per-element delay and stopping once the size term alone (a lower bound
    of the estimate) rules out reaching the current top-k."""
    client_id = request.client_id
    size = request.input_size
    top_k = request.top_k
    w_latency = request.weights.latency
    w_accuracy = request.weights.accuracy
    top = candidates.max_accuracy or 1.0  # all accuracies are 0: every ratio is 0
    bounds = LATENCY_BUCKETS_MS
    latency_points = _latency_points(w_latency)
    heap: list[_Row] = []
    threshold = -_INF
    threshold_estimate = _INF
    limit = _INF
    for e in candidates.by_delay:
        floor = e.delay_per_element_ms * size
        if floor > limit:
            break
        latency = e.probes.get(client_id)
        if latency is None:
            latency = e.median_probe_ms
            if latency is None:
                latency = fallback
        estimate = latency + floor
        accuracy = e.accuracy
        score = latency_points[bisect_left(bounds, estimate)] + w_accuracy * (accuracy / top)
        if score <= threshold and (score < threshold or estimate > threshold_estimate):
            continue
        row = (score, -estimate, accuracy, -e.order, e)
        if len(heap) < top_k:
            heappush(heap, row)
            if len(heap) < top_k:
                continue
        elif row > heap[0]:
            heapreplace(heap, row)
        else:
            continue
        threshold = heap[0][0]
        threshold_estimate = -heap[0][1]
        limit = _estimate_limit(latency_points, w_accuracy, threshold)
    return _ranked(heap)


def adaptive(
    request: SelectionRequest,
    candidates: CandidateSet,
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """Weighted idea with live load, learned service time and SLOs.

    Estimated latency (:func:`adaptive_estimate_ms`) = net + base + registered
    per-element delay * input_size + slope * L: net is the probe latency (or fallback),
    base and slope the executor's learned service time at no load and ms per unit of
    load (the view's fallbacks while unlearned; see ``mulambda.selection.view``), L the view's
    load (status in_flight, outstanding and pending dispatches). Candidates below
    ``slo.min_accuracy`` and then those whose estimate exceeds ``slo.max_latency_ms``
    are removed (raising NoCandidate naming the filter that removed the last ones), and
    so are those whose estimate ends after ``request.answer_by`` (``now`` in epoch
    seconds): when none is left, NoCandidate with criterion ``deadline`` at once, the
    request cannot be served in time by anyone, and waiting would only load the
    executors with an answer nobody can use.
    Latency score is :func:`smooth_latency_score` up to the last bound (1020 ms), then
    ``(1/9) * 1020 / estimate``: continuous at 1020 ms and positive and strictly
    decreasing beyond it, so a saturated executor still ranks by its estimate instead of
    every estimate above 1020 ms scoring 0 and the choice falling to accuracy alone.
    Accuracy score (relative to the best accuracy among the candidates that passed the
    SLOs) and tie-break as in :func:`weighted`.
    """
    if not candidates:
        return []
    client_id = request.client_id
    size = request.input_size
    w_latency = request.weights.latency
    w_accuracy = request.weights.accuracy
    slo = request.slo
    max_latency = _INF
    min_accuracy = -_INF
    if slo is not None:
        if slo.max_latency_ms is not None:
            max_latency = slo.max_latency_ms
        if slo.min_accuracy is not None:
            min_accuracy = slo.min_accuracy
    # What is left of the time to answer; the SLO filter below does not use it, so the
    # accuracy normaliser stays the one of the candidates that pass the SLOs.
    limit = max_latency
    answer_by = request.answer_by
    if answer_by is not None:
        limit = min(limit, (answer_by.timestamp() - now) * 1000.0)
    too_late = _INF  # the lowest estimate the deadline left out
    fallback_net = view.fallback_latency_ms()
    fallback_service = view.fallback_service_ms()
    fallback_slope = view.fallback_load_slope_ms()
    entries = candidates.entries
    if max_latency < _INF:
        # The accuracy normaliser is the best accuracy among the candidates that pass
        # both SLOs, which a latency SLO makes known only after a first pass.
        accurate_enough = 0
        normaliser = 0.0
        survivors = 0
        for e in entries:
            if e.accuracy < min_accuracy:
                continue
            accurate_enough += 1
            if (
                adaptive_estimate_ms(
                    e, client_id, size, fallback_net, fallback_service, fallback_slope
                )
                <= max_latency
            ):
                survivors += 1
                normaliser = max(normaliser, e.accuracy)
        if not survivors:
            if not accurate_enough:
                raise _below_min_accuracy(min_accuracy)
            raise NoCandidate(
                f"no candidate's estimated latency is within slo.max_latency_ms={max_latency}",
                criterion="slo.max_latency_ms",
            )
    else:
        # The best accuracy passes any accuracy SLO that anything passes.
        normaliser = candidates.max_accuracy
        if normaliser < min_accuracy:
            raise _below_min_accuracy(min_accuracy)
    normaliser = normaliser or 1.0  # all accuracies are 0: every accuracy score is 0
    top_k = request.top_k
    bounds = LATENCY_BUCKETS_MS
    latency_points = _latency_points(w_latency)
    heap: list[_Row] = []
    threshold = -_INF
    # Same pruned scan as weighted(); estimate and score inlined (a call per candidate
    # would cost a fifth of the loop).
    # By descending accuracy: both the accuracy SLO and the score bound end the scan.
    for e in candidates.by_accuracy:
        accuracy = e.accuracy
        if accuracy < min_accuracy:
            break
        score = w_accuracy * (accuracy / normaliser)
        if score + w_latency < threshold:
            break
        net = e.probes.get(client_id)
        if net is None:
            net = e.median_probe_ms
            if net is None:
                net = fallback_net
        base = e.service_ms
        if base is None:
            estimate = net + fallback_service + e.delay_per_element_ms * size
            estimate += fallback_slope * e.load
        else:
            estimate = net + base + e.delay_per_element_ms * size + e.load_slope_ms * e.load
        if estimate > limit:
            if estimate <= max_latency and estimate < too_late:
                too_late = estimate
            continue
        i = bisect_left(bounds, estimate)
        if i == 0:
            score += w_latency
        elif i < _N_BUCKETS:
            # Upper end of this bucket's linear piece first: most losers stop here.
            if score + latency_points[i - 1] < threshold:
                continue
            lo = bounds[i - 1]
            hi = bounds[i]
            score += w_latency * ((_N_BUCKETS - i + (hi - estimate) / (hi - lo)) / _N_BUCKETS)
        else:
            score += w_latency * _TAIL / estimate
        if score < threshold:
            continue
        row = (score, -estimate, accuracy, -e.order, e)
        if len(heap) < top_k:
            heappush(heap, row)
            if len(heap) == top_k:
                threshold = heap[0][0]
        elif row > heap[0]:
            heapreplace(heap, row)
            threshold = heap[0][0]
    if not heap and too_late < _INF:
        raise _past_deadline(too_late, limit)
    return _ranked(heap)


def _past_deadline(best_estimate_ms: float, left_ms: float) -> NoCandidate:
    return NoCandidate(
        f"no candidate can answer before the deadline: the best estimate is "
        f"{best_estimate_ms:.0f} ms, {max(0.0, left_ms):.0f} ms are left",
        criterion="deadline",
    )


def _below_min_accuracy(min_accuracy: float) -> NoCandidate:
    return NoCandidate(
        f"no candidate reaches slo.min_accuracy={min_accuracy}", criterion="slo.min_accuracy"
    )


def adaptive_estimate_ms(
    entry: ExecutorEntry,
    client_id: str,
    input_size: int,
    fallback_net_ms: float,
    fallback_service_ms: float,
    fallback_slope_ms: float,
) -> float:
    """The adaptive policy's latency estimate: net + base + delay * size + slope * load.

    ``base`` and ``slope`` are the executor's learned ones, or the fallbacks given (the
    view's :meth:`~ExecutorView.fallback_service_ms` and
    :meth:`~ExecutorView.fallback_load_slope_ms`) while it has no observations.
    """
    net = entry.probes.get(client_id)
    if net is None:
        net = entry.median_probe_ms
        if net is None:
            net = fallback_net_ms
    base = entry.service_ms
    slope = entry.load_slope_ms
    if base is None:
        base = fallback_service_ms
        slope = fallback_slope_ms
    return net + base + entry.delay_per_element_ms * input_size + slope * entry.load


def _weighted_estimate(entry: ExecutorEntry, request: SelectionRequest, fallback: float) -> float:
    return (
        _network_ms(entry, request.client_id, fallback)
        + entry.delay_per_element_ms * request.input_size
    )


def round_robin(
    request: SelectionRequest,
    candidates: CandidateSet,
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """Rotate through the candidates (id order) per traits key; the next ones follow.

    Scores are rank-based (k, k-1, ...); estimates are the weighted policy's.
    """
    n = len(candidates)
    if n == 0:
        return []
    key = request.traits.key()
    counter = state.rr_counters.get(key, 0)
    state.rr_counters[key] = counter + 1
    start = counter % n
    k = min(request.top_k, n)
    return _rank_in_order([candidates[(start + j) % n] for j in range(k)], request, view)


def random_choice(
    request: SelectionRequest,
    candidates: CandidateSet,
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """Uniformly random distinct candidates from ``state.rng``; rank-based scores."""
    if not candidates:
        return []
    k = min(request.top_k, len(candidates))
    return _rank_in_order(state.rng.sample(candidates.entries, k), request, view)


def _rank_in_order(
    picked: Sequence[ExecutorEntry], request: SelectionRequest, view: ExecutorView
) -> list[Candidate]:
    """Candidates in the order given, scored by rank (k, k-1, ...), with the weighted
    policy's estimates: the baselines' reply."""
    k = len(picked)
    fallback = view.fallback_latency_ms()
    return [
        _candidate(e, float(k - rank), _weighted_estimate(e, request, fallback))
        for rank, e in enumerate(picked)
    ]


def plain_net_latency(
    request: SelectionRequest,
    candidates: CandidateSet,
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """Lowest probe latency (fallback when unknown) first, ties by executor id.

    Score is minus the network latency; the estimate adds the weighted policy's size term.
    """
    if not candidates:
        return []
    client_id = request.client_id
    fallback = view.fallback_latency_ms()
    top_k = request.top_k
    heap: list[tuple[float, int, ExecutorEntry]] = []
    threshold = -_INF
    for e in candidates.entries:
        latency = e.probes.get(client_id)
        if latency is None:
            latency = e.median_probe_ms
            if latency is None:
                latency = fallback
        if -latency < threshold:
            continue
        row = (-latency, -e.order, e)
        if len(heap) < top_k:
            heappush(heap, row)
            if len(heap) == top_k:
                threshold = heap[0][0]
        elif row > heap[0]:
            heapreplace(heap, row)
            threshold = heap[0][0]
    heap.sort(reverse=True)
    size = request.input_size
    return [
        _candidate(e, neg_net, -neg_net + e.delay_per_element_ms * size) for neg_net, _, e in heap
    ]


POLICIES: dict[str, Policy] = {
    "weighted": weighted,
    "adaptive": adaptive,
    "round-robin": round_robin,
    "random": random_choice,
    "plain-net-latency": plain_net_latency,
}
"""Policies by the name a request's ``policy`` field uses."""


def select(
    view: ExecutorView,
    request: SelectionRequest,
    now: float,
    default_policy: str = DEFAULT_POLICY,
    *,
    state: PolicyState,
    selector_id: str | None = None,
    policies: Mapping[str, Policy] | None = None,
) -> SelectionReply:
    """Answer one selection request from the view; never raises for a bad request.

    Unknown policy → ``status=error``. No executor with the traits, all stale, none
    AVAILABLE, or a policy's SLO filter empties the set → ``status=no_candidate`` with
    ``eliminated_by`` = ``traits`` / ``liveness`` / ``model_state`` / the policy's
    criterion. Any other MulambdaError from a policy → ``status=error``. Deadlines are
    the caller's business (check before calling).
    """
    table = POLICIES if policies is None else policies
    name = request.policy or default_policy
    fields: dict[str, object] = {
        "correlation_id": request.correlation_id,
        "policy": name,
        "selector_id": selector_id,
    }
    policy = table.get(name)
    if policy is None:
        fields["status"] = SelectionStatus.ERROR
        fields["error"] = f"unknown policy {name!r}; known: {', '.join(sorted(table))}"
        return _make_reply(fields)
    candidates = view.candidates(request.traits, now)
    try:
        if not candidates:
            criterion = view.eliminated_by(request.traits, now) or "traits"
            raise NoCandidate(_NO_CANDIDATE_REASONS[criterion], criterion=criterion)
        ranked = policy(request, candidates, view, now, state)
        if not ranked:
            raise NoCandidate(f"policy {name!r} ranked no candidate", criterion=name)
    except NoCandidate as exc:
        fields["status"] = SelectionStatus.NO_CANDIDATE
        fields["eliminated_by"] = exc.criterion
        fields["error"] = f"{exc.reason} (traits {'/'.join(request.traits.key())})"
        return _make_reply(fields)
    except MulambdaError as exc:
        fields["status"] = SelectionStatus.ERROR
        fields["error"] = exc.reason
        return _make_reply(fields)
    fields["status"] = SelectionStatus.OK
    fields["candidates"] = ranked
    return _make_reply(fields)


def _make_reply(fields: dict[str, object]) -> SelectionReply:
    # Validating a dict skips BaseModel.__init__'s overhead (about 0.5 us per reply).
    reply: SelectionReply = SelectionReply.__pydantic_validator__.validate_python(fields)
    return reply


_NO_CANDIDATE_REASONS = {
    "traits": "no executor is registered with these traits",
    "liveness": "every executor with these traits missed its heartbeats",
    "model_state": "no live executor with these traits has its model AVAILABLE",
}
