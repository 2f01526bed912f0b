"""Selection policies: pure functions that rank an :class:`~mulambda.view.ExecutorView`'s
candidates for one :class:`~mulambda.events.SelectionRequest`.

A policy is called as ``policy(request, candidates, view, now, state)`` where
``candidates`` are the live, available executors with the request's traits in ascending
``executor_id`` order (what :meth:`ExecutorView.candidates` returns, never empty when
called from :func:`select`), ``view`` answers latency fallbacks, ``now`` is the view's
clock and ``state`` is the selector's mutable :class:`PolicyState`. It returns up to
``request.top_k`` :class:`~mulambda.events.Candidate` objects, best first, or raises
:class:`~mulambda.errors.NoCandidate` naming the criterion (e.g. ``slo.max_latency_ms``)
that removed the last candidates. :func:`select` wraps all of it into a
:class:`~mulambda.events.SelectionReply`.

Tie-break of the scoring policies (``weighted``, ``adaptive``): higher score, then lower
estimated latency, then higher accuracy, then lower ``executor_id``. Only ``adaptive``
honours ``request.slo``; ``weighted`` reproduces the research prototype exactly.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Sequence
from heapq import nlargest

from mulambda.errors import MulambdaError, NoCandidate
from mulambda.events import Candidate, SelectionReply, SelectionRequest, SelectionStatus
from mulambda.view import ExecutorEntry, ExecutorView, TraitsKey

LATENCY_BUCKETS_MS: tuple[float, ...] = (10.0, 30.0, 60.0, 90.0, 150.0, 240.0, 390.0, 630.0, 1020.0)
"""The prototype's latency bucket bounds (ms)."""

_N_BUCKETS = len(LATENCY_BUCKETS_MS)
# Score of bucket i is 1 - i/9; index 9 (above the last bound) scores 0.
_BUCKET_SCORES: tuple[float, ...] = tuple(1.0 - i / _N_BUCKETS for i in range(_N_BUCKETS + 1))


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
    [SelectionRequest, Sequence[ExecutorEntry], ExecutorView, float, PolicyState],
    list[Candidate],
]
"""``(request, candidates, view, now, state) -> ranked candidates``; see module doc."""


def bucket_latency_score(estimate_ms: float) -> float:
    """The prototype's score: first bucket i with bound >= estimate gives 1 - i/9, else 0."""
    return _BUCKET_SCORES[bisect_left(LATENCY_BUCKETS_MS, estimate_ms)]


def smooth_latency_score(estimate_ms: float) -> float:
    """A continuous version of :func:`bucket_latency_score`.

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


def _candidate(entry: ExecutorEntry, score: float, estimate_ms: float | None) -> Candidate:
    return Candidate(
        executor_id=entry.executor_id,
        endpoint=entry.endpoint,
        model_name=entry.model_name,
        model_version=entry.model_version,
        score=score,
        estimated_latency_ms=estimate_ms,
        accuracy=entry.accuracy,
    )


def _network_ms(entry: ExecutorEntry, client_id: str, fallback: float) -> float:
    latency = entry.probes.get(client_id)
    if latency is not None:
        return latency
    median = entry.median_probe_ms
    return fallback if median is None else median


def weighted(
    request: SelectionRequest,
    candidates: Sequence[ExecutorEntry],
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """The prototype's weighted score, exactly.

    Estimated latency = client-executor probe latency (or the view's fallback) +
    ``model_data_delay_ms_per_element * input_size``; latency score from the buckets
    (:func:`bucket_latency_score`); accuracy score = accuracy / highest accuracy among
    the candidates (0 for all when that is 0); score = w_latency * latency score +
    w_accuracy * accuracy score.
    """
    if not candidates:
        return []
    client_id = request.client_id
    size = request.input_size
    w_latency = request.weights.latency
    w_accuracy = request.weights.accuracy
    fallback = view.fallback_latency_ms()
    bounds = LATENCY_BUCKETS_MS
    bucket_scores = _BUCKET_SCORES
    rows: list[tuple[float, float, float, int]] = []
    append = rows.append
    max_accuracy = 0.0
    # Hot loop: plain slots and locals only (see benchmarks/bench_policies.py).
    for i, e in enumerate(candidates):
        latency = e.probes.get(client_id)
        if latency is None:
            latency = e.median_probe_ms
            if latency is None:
                latency = fallback
        estimate = latency + e.delay_per_element_ms * size
        accuracy = e.accuracy
        if accuracy > max_accuracy:
            max_accuracy = accuracy
        append((w_latency * bucket_scores[bisect_left(bounds, estimate)], estimate, accuracy, i))
    return _rank(rows, max_accuracy, w_accuracy, candidates, request.top_k)


def _rank(
    rows: list[tuple[float, float, float, int]],
    max_accuracy: float,
    w_accuracy: float,
    candidates: Sequence[ExecutorEntry],
    top_k: int,
) -> list[Candidate]:
    """Top-k of (weighted latency score, estimate, accuracy, index) rows, tie-broken."""
    if max_accuracy > 0:
        keyed = [
            (ls + w_accuracy * (acc / max_accuracy), -est, acc, -i) for ls, est, acc, i in rows
        ]
    else:
        keyed = [(ls, -est, acc, -i) for ls, est, acc, i in rows]
    # -est, acc, -i: lower estimate, higher accuracy, lower position (= lower id) win ties.
    return [_candidate(candidates[-i], s, -e) for s, e, _, i in nlargest(top_k, keyed)]


def adaptive(
    request: SelectionRequest,
    candidates: Sequence[ExecutorEntry],
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """Weighted idea with live load, learned service time and SLOs.

    Estimated latency = net + S * (1 + L): net is the probe latency (or fallback),
    S = learned base service time (the view's fallback when unlearned) + registered
    per-element delay * input_size, L = ``max(status in_flight, routers' outstanding)``.
    ``1 + L`` is the M/M/1 sojourn factor 1 / (1 - rho) written through Little's law, so
    a busy executor's estimate grows with its queue. Candidates below
    ``slo.min_accuracy`` and then those whose estimate exceeds ``slo.max_latency_ms``
    are removed. Latency score is :func:`smooth_latency_score`; accuracy score and
    tie-break as in :func:`weighted`, over the candidates that passed the SLOs.
    """
    if not candidates:
        return []
    client_id = request.client_id
    size = request.input_size
    w_latency = request.weights.latency
    w_accuracy = request.weights.accuracy
    slo = request.slo
    max_latency = slo.max_latency_ms if slo is not None else None
    min_accuracy = slo.min_accuracy if slo is not None else None
    fallback_net = view.fallback_latency_ms()
    fallback_service = view.fallback_service_ms()
    score_of = smooth_latency_score
    rows: list[tuple[float, float, float, int]] = []
    append = rows.append
    max_accuracy = 0.0
    accurate_enough = 0
    for i, e in enumerate(candidates):
        accuracy = e.accuracy
        if min_accuracy is not None and accuracy < min_accuracy:
            continue
        accurate_enough += 1
        net = e.probes.get(client_id)
        if net is None:
            net = e.median_probe_ms
            if net is None:
                net = fallback_net
        base = e.service_ms
        if base is None:
            base = fallback_service
        estimate = net + (base + e.delay_per_element_ms * size) * (1 + e.load)
        if max_latency is not None and estimate > max_latency:
            continue
        if accuracy > max_accuracy:
            max_accuracy = accuracy
        append((w_latency * score_of(estimate), estimate, accuracy, i))
    if not rows:
        if accurate_enough == 0:
            raise NoCandidate(
                f"no candidate reaches slo.min_accuracy={min_accuracy}",
                criterion="slo.min_accuracy",
            )
        raise NoCandidate(
            f"no candidate's estimated latency is within slo.max_latency_ms={max_latency}",
            criterion="slo.max_latency_ms",
        )
    return _rank(rows, max_accuracy, w_accuracy, candidates, request.top_k)


def _weighted_estimate(entry: ExecutorEntry, request: SelectionRequest, fallback: float) -> float:
    return (
        _network_ms(entry, request.client_id, fallback)
        + entry.delay_per_element_ms * request.input_size
    )


def round_robin(
    request: SelectionRequest,
    candidates: Sequence[ExecutorEntry],
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
    fallback = view.fallback_latency_ms()
    picked = [candidates[(start + j) % n] for j in range(k)]
    return [
        _candidate(e, float(k - rank), _weighted_estimate(e, request, fallback))
        for rank, e in enumerate(picked)
    ]


def random_choice(
    request: SelectionRequest,
    candidates: Sequence[ExecutorEntry],
    view: ExecutorView,
    now: float,
    state: PolicyState,
) -> list[Candidate]:
    """Uniformly random distinct candidates from ``state.rng``; rank-based scores."""
    if not candidates:
        return []
    k = min(request.top_k, len(candidates))
    picked = state.rng.sample(candidates, k)
    fallback = view.fallback_latency_ms()
    return [
        _candidate(e, float(k - rank), _weighted_estimate(e, request, fallback))
        for rank, e in enumerate(picked)
    ]


def plain_net_latency(
    request: SelectionRequest,
    candidates: Sequence[ExecutorEntry],
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
    keyed = [(-_network_ms(e, client_id, fallback), -i) for i, e in enumerate(candidates)]
    size = request.input_size
    out = []
    for neg_net, neg_i in nlargest(request.top_k, keyed):
        e = candidates[-neg_i]
        out.append(_candidate(e, neg_net, -neg_net + e.delay_per_element_ms * size))
    return out


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
    default_policy: str = "weighted",
    *,
    state: PolicyState,
    selector_id: str | None = None,
    policies: dict[str, Policy] | None = None,
) -> SelectionReply:
    """Answer one selection request from the view; never raises for a bad request.

    Unknown policy → ``status=error``. No executor with the traits, all stale, none
    AVAILABLE, or a policy's SLO filter empties the set → ``status=no_candidate`` with
    ``eliminated_by`` = ``traits`` / ``liveness`` / ``model_state`` / the policy's
    criterion. Deadlines are the caller's business (check before calling).
    """
    table = POLICIES if policies is None else policies
    name = request.policy or default_policy
    policy = table.get(name)
    if policy is None:
        return SelectionReply(
            correlation_id=request.correlation_id,
            status=SelectionStatus.ERROR,
            policy=name,
            error=f"unknown policy {name!r}; known: {', '.join(sorted(table))}",
            selector_id=selector_id,
        )
    candidates = view.candidates(request.traits, now)
    try:
        if not candidates:
            criterion = view.eliminated_by(request.traits, now) or "traits"
            raise NoCandidate(_NO_CANDIDATE_REASONS[criterion], criterion=criterion)
        ranked = policy(request, candidates, view, now, state)
        if not ranked:
            raise NoCandidate(f"policy {name!r} ranked no candidate", criterion=name)
    except NoCandidate as exc:
        return SelectionReply(
            correlation_id=request.correlation_id,
            status=SelectionStatus.NO_CANDIDATE,
            policy=name,
            eliminated_by=exc.criterion,
            error=f"{exc.reason} (traits {'/'.join(request.traits.key())})",
            selector_id=selector_id,
        )
    except MulambdaError as exc:
        return SelectionReply(
            correlation_id=request.correlation_id,
            status=SelectionStatus.ERROR,
            policy=name,
            error=exc.reason,
            selector_id=selector_id,
        )
    return SelectionReply(
        correlation_id=request.correlation_id,
        status=SelectionStatus.OK,
        policy=name,
        candidates=ranked,
        selector_id=selector_id,
    )


_NO_CANDIDATE_REASONS = {
    "traits": "no executor is registered with these traits",
    "liveness": "every executor with these traits missed its heartbeats",
    "model_state": "no live executor with these traits has its model AVAILABLE",
}
