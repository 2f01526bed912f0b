"""The router's recent rankings: the last good selection per kind of request.

When a selection fails (the selector does not answer in time, Kafka is unavailable), a
request like one routed moments ago can still be served from that request's ranking:
the executors rarely change within seconds, and the route's failover covers one that
did. :class:`RankingCache` keeps the last ``ok`` ranking per :func:`ranking_key` (client,
traits, soft weights, policy and SLO: what the selector ranks by, except the input size)
for at most ``max_age_s``, and at most ``max_entries`` of them, least recently used
forgotten first. A ``no_candidate`` answer forgets the key: the selector said nobody
serves it now, and an old ranking must not contradict that.

Pure: no I/O and no clock of its own; methods take ``now`` (seconds on any clock, the
same one for every call).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from mulambda.errors import ConfigurationError
from mulambda.wire.events import Candidate, InferenceRequest

RankingKey = tuple[
    str,
    tuple[str, str, str],
    tuple[float, float],
    str | None,
    tuple[float | None, float | None] | None,
]
"""What a ranking is remembered under: client, traits, weights, policy, SLO."""


def ranking_key(request: InferenceRequest) -> RankingKey:
    """The key of the rankings ``request`` may share with earlier requests."""
    slo = request.slo
    return (
        request.client_id,
        request.traits.key(),
        (request.weights.latency, request.weights.accuracy),
        request.policy,
        None if slo is None else (slo.max_latency_ms, slo.min_accuracy),
    )


@dataclass(frozen=True, slots=True)
class _Ranking:
    candidates: tuple[Candidate, ...]
    selected_at: float


class RankingCache:
    """Last good ranking per :func:`ranking_key`, younger than ``max_age_s``, bounded
    to ``max_entries`` (least recently used forgotten first). ``max_age_s`` 0 keeps
    nothing."""

    def __init__(self, *, max_age_s: float, max_entries: int) -> None:
        if max_age_s < 0:
            raise ConfigurationError(f"ranking max age must be >= 0, got {max_age_s}")
        if max_entries < 1:
            raise ConfigurationError(f"ranking cache entries must be >= 1, got {max_entries}")
        self.max_age_s = max_age_s
        """Seconds a ranking may be used after its selection."""
        self.max_entries = max_entries
        """Rankings kept at most."""
        self._rankings: OrderedDict[RankingKey, _Ranking] = OrderedDict()

    def __len__(self) -> int:
        """Rankings held now (expired ones included until looked up or evicted)."""
        return len(self._rankings)

    def remember(
        self, request: InferenceRequest, candidates: Sequence[Candidate], now: float
    ) -> None:
        """The selector ranked ``candidates`` for ``request`` at ``now``."""
        if self.max_age_s <= 0 or not candidates:
            return
        key = ranking_key(request)
        self._rankings.pop(key, None)
        self._rankings[key] = _Ranking(tuple(candidates), now)
        while len(self._rankings) > self.max_entries:
            self._rankings.popitem(last=False)

    def recall(self, request: InferenceRequest, now: float) -> tuple[Candidate, ...] | None:
        """The ranking of an earlier request like ``request``, if one is young enough."""
        key = ranking_key(request)
        ranking = self._rankings.get(key)
        if ranking is None:
            return None
        if now - ranking.selected_at >= self.max_age_s:
            del self._rankings[key]
            return None
        self._rankings.move_to_end(key)
        return ranking.candidates

    def forget(self, request: InferenceRequest) -> None:
        """Drop the ranking of requests like ``request`` (nobody serves them now)."""
        self._rankings.pop(ranking_key(request), None)


__all__ = ["RankingCache", "RankingKey", "ranking_key"]
