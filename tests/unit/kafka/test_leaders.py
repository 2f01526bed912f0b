"""Which broker leads which partition, from metadata (Admin.leaders / busiest_leader)."""

from __future__ import annotations

from typing import Any

import pytest

from mulambda.kafka.admin import busiest, partition_leaders
from mulambda.kafka.records import TopicPartition

pytestmark = pytest.mark.unit


def _topic(name: str, *leaders: int, error_code: int = 0) -> dict[str, Any]:
    return {
        "error_code": error_code,
        "topic": name,
        "is_internal": False,
        "partitions": [
            {"error_code": 0, "partition": i, "leader": leader, "replicas": [1, 2, 3]}
            for i, leader in enumerate(leaders)
        ],
    }


def test_leaders_of_the_named_topics_only_and_only_elected_ones() -> None:
    meta = [
        _topic("requests", 1, 2, 2),
        _topic("results", 3, -1),  # partition 1 mid-election: no leader to count
        _topic("other", 1, 1, 1),
        _topic("broken", 2, error_code=3),
    ]
    leaders = partition_leaders(meta, {"requests", "results", "broken"})
    assert leaders == {
        TopicPartition("requests", 0): 1,
        TopicPartition("requests", 1): 2,
        TopicPartition("requests", 2): 2,
        TopicPartition("results", 0): 3,
    }
    assert busiest(leaders) == 2


def test_the_busiest_of_a_tie_is_the_lowest_node_and_none_without_leaders() -> None:
    tie = partition_leaders([_topic("t", 3, 1, 3, 1)], {"t"})
    assert busiest(tie) == 1
    assert busiest({}) is None
