"""The recent-rankings cache: keyed by what the selector ranks by, aged, bounded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from mulambda.errors import ConfigurationError
from mulambda.routing.rankings import RankingCache, ranking_key
from mulambda.wire.events import Slo, SoftWeights, utcnow
from tests.factories import TRAITS, ranked, routed_request

pytestmark = pytest.mark.unit


def test_requests_differing_only_in_body_size_deadline_or_ids_share_a_key() -> None:
    one = routed_request()
    other = routed_request(
        correlation_id="another",
        body={"instances": [1, 2, 3]},
        input_size=3,
        deadline=utcnow() + timedelta(seconds=99),
        verb="classify",
        reply_topic="t.other",
    )
    assert ranking_key(one) == ranking_key(other)


@pytest.mark.parametrize(
    "other",
    [
        {"client_id": "cl-2"},
        {"traits": TRAITS.model_copy(update={"output_format": "probs-4"})},
        {"weights": SoftWeights(latency=0.1)},
        {"policy": "weighted"},
        {"slo": Slo(min_accuracy=0.8)},
    ],
)
def test_client_traits_weights_policy_and_slo_each_make_another_key(
    other: dict[str, Any],
) -> None:
    assert ranking_key(routed_request()) != ranking_key(routed_request(**other))


def test_a_remembered_ranking_is_recalled_until_it_is_too_old() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(routed_request(), ranked("a", "b"), 100.0)
    assert cache.recall(routed_request(), 129.9) == tuple(ranked("a", "b"))
    assert cache.recall(routed_request(), 130.0) is None
    assert len(cache) == 0  # dropped when found expired
    assert cache.recall(routed_request(client_id="unknown"), 100.0) is None


def test_a_newer_ranking_replaces_the_older_and_restarts_its_age() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(routed_request(), ranked("a"), 100.0)
    cache.remember(routed_request(), ranked("b"), 120.0)
    assert cache.recall(routed_request(), 145.0) == tuple(ranked("b"))
    assert len(cache) == 1


def test_the_least_recently_used_ranking_is_forgotten_first() -> None:
    cache = RankingCache(max_age_s=30, max_entries=2)
    first, second, third = (routed_request(client_id=c) for c in ("c1", "c2", "c3"))
    cache.remember(first, ranked("a"), 100.0)
    cache.remember(second, ranked("b"), 100.0)
    assert cache.recall(first, 101.0) is not None  # first is now the most recently used
    cache.remember(third, ranked("c"), 102.0)
    assert len(cache) == 2
    assert cache.recall(second, 103.0) is None
    assert cache.recall(first, 103.0) == tuple(ranked("a"))
    assert cache.recall(third, 103.0) == tuple(ranked("c"))


def test_forget_drops_the_ranking() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(routed_request(), ranked("a"), 100.0)
    cache.forget(routed_request())
    cache.forget(routed_request(client_id="never-remembered"))
    assert cache.recall(routed_request(), 100.0) is None


def test_empty_rankings_and_a_zero_age_are_not_kept() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(routed_request(), [], 100.0)
    assert len(cache) == 0
    off = RankingCache(max_age_s=0, max_entries=10)
    off.remember(routed_request(), ranked("a"), 100.0)
    assert off.recall(routed_request(), 100.0) is None


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ConfigurationError, match="max age"):
        RankingCache(max_age_s=-1, max_entries=1)
    with pytest.raises(ConfigurationError, match="entries"):
        RankingCache(max_age_s=1, max_entries=0)
