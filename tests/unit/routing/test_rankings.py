"""The recent-rankings cache: keyed by what the selector ranks by, aged, bounded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from mulambda.errors import ConfigurationError
from mulambda.routing.rankings import RankingCache, ranking_key
from mulambda.wire.events import Candidate, InferenceRequest, Slo, SoftWeights, utcnow
from tests.factories import TRAITS

pytestmark = pytest.mark.unit


def _request(**fields: Any) -> InferenceRequest:
    values: dict[str, Any] = {
        "reply_topic": "t.results",
        "deadline": utcnow() + timedelta(seconds=10),
        "client_id": "cl-1",
        "traits": TRAITS,
        "body": {"instances": [1]},
    }
    values.update(fields)
    return InferenceRequest(**values)


def _ranked(*executor_ids: str) -> list[Candidate]:
    return [
        Candidate(executor_id=e, endpoint=f"http://{e}:1", model_name="m", score=1.0, accuracy=0.9)
        for e in executor_ids
    ]


def test_requests_differing_only_in_body_size_deadline_or_ids_share_a_key() -> None:
    one = _request()
    other = _request(
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
    assert ranking_key(_request()) != ranking_key(_request(**other))


def test_a_remembered_ranking_is_recalled_until_it_is_too_old() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(_request(), _ranked("a", "b"), 100.0)
    assert cache.recall(_request(), 129.9) == tuple(_ranked("a", "b"))
    assert cache.recall(_request(), 130.0) is None
    assert len(cache) == 0  # dropped when found expired
    assert cache.recall(_request(client_id="unknown"), 100.0) is None


def test_a_newer_ranking_replaces_the_older_and_restarts_its_age() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(_request(), _ranked("a"), 100.0)
    cache.remember(_request(), _ranked("b"), 120.0)
    assert cache.recall(_request(), 145.0) == tuple(_ranked("b"))
    assert len(cache) == 1


def test_the_least_recently_used_ranking_is_forgotten_first() -> None:
    cache = RankingCache(max_age_s=30, max_entries=2)
    first, second, third = (_request(client_id=c) for c in ("c1", "c2", "c3"))
    cache.remember(first, _ranked("a"), 100.0)
    cache.remember(second, _ranked("b"), 100.0)
    assert cache.recall(first, 101.0) is not None  # first is now the most recently used
    cache.remember(third, _ranked("c"), 102.0)
    assert len(cache) == 2
    assert cache.recall(second, 103.0) is None
    assert cache.recall(first, 103.0) == tuple(_ranked("a"))
    assert cache.recall(third, 103.0) == tuple(_ranked("c"))


def test_forget_drops_the_ranking() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(_request(), _ranked("a"), 100.0)
    cache.forget(_request())
    cache.forget(_request(client_id="never-remembered"))
    assert cache.recall(_request(), 100.0) is None


def test_empty_rankings_and_a_zero_age_are_not_kept() -> None:
    cache = RankingCache(max_age_s=30, max_entries=10)
    cache.remember(_request(), [], 100.0)
    assert len(cache) == 0
    off = RankingCache(max_age_s=0, max_entries=10)
    off.remember(_request(), _ranked("a"), 100.0)
    assert off.recall(_request(), 100.0) is None


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ConfigurationError, match="max age"):
        RankingCache(max_age_s=-1, max_entries=1)
    with pytest.raises(ConfigurationError, match="entries"):
        RankingCache(max_age_s=1, max_entries=0)
