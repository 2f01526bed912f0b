"""The open-loop load's pure parts: the schedule, the client ids, the request JSON."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from mulambda.harness.load import (
    LoadSpec,
    arrival_offsets,
    clients_covering,
    partition_of,
    request_json,
)
from mulambda.wire.codec import decode
from mulambda.wire.events import InferenceRequest


def test_fixed_arrivals_are_evenly_spaced_within_the_duration() -> None:
    offsets = arrival_offsets(LoadSpec(rate=100, duration_s=2.0, arrivals="fixed"))
    assert len(offsets) == 200
    assert offsets[0] == 0.0
    assert offsets[1] == pytest.approx(0.01)
    assert offsets[-1] < 2.0


def test_poisson_arrivals_have_the_rate_on_average_and_stay_in_the_duration() -> None:
    offsets = arrival_offsets(LoadSpec(rate=100, duration_s=50.0, seed=7))
    assert offsets == sorted(offsets)
    assert all(0 < t < 50.0 for t in offsets)
    assert 4700 < len(offsets) < 5300
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.01, rel=0.05)
    # Exponential gaps: about e^-1 of them exceed the mean.
    assert 0.33 < sum(g > 0.01 for g in gaps) / len(gaps) < 0.41


def test_the_schedule_is_repeatable_with_a_seed_and_bounded_in_count() -> None:
    spec = LoadSpec(rate=1000, duration_s=10.0, seed=3)
    assert arrival_offsets(spec) == arrival_offsets(spec)
    assert arrival_offsets(spec, random.Random(4)) != arrival_offsets(spec)
    bounded = LoadSpec(rate=1000, duration_s=10.0, max_requests=50)
    assert len(arrival_offsets(bounded)) == 50
    assert (
        len(arrival_offsets(LoadSpec(rate=1000, duration_s=10.0, arrivals="fixed", max_requests=7)))
        == 7
    )
    assert LoadSpec(rate=100, duration_s=10.0).bound == 1210


@pytest.mark.parametrize(
    ("field", "value"),
    [("rate", 0.0), ("rate", float("inf")), ("duration_s", -1.0), ("deadline_s", 0.0)],
)
def test_nonsense_specs_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        LoadSpec(**{field: value})  # type: ignore[arg-type]


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # aiokafka's DefaultPartitioner is the Java client's murmur2, toPositive, modulo.
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(6))
    for key in ("bench-client-0", "bench-client-1", "a", "demo-client", ""):
        expected = DefaultPartitioner()(key.encode(), partitions, partitions)
        assert partition_of(key, 6) == expected


def test_clients_cover_every_partition_evenly() -> None:
    clients = clients_covering(6, per_partition=2)
    assert len(clients) == len(set(clients)) == 12
    assert Counter(partition_of(c, 6) for c in clients) == dict.fromkeys(range(6), 2)
    with pytest.raises(ValueError, match="client ids"):
        clients_covering(6, per_partition=5, limit=10)


def test_the_request_json_is_a_valid_inference_request() -> None:
    now = datetime(2026, 5, 9, 8, 30, 0, 123456, tzinfo=UTC)
    spec = LoadSpec(weights=(0.2, 0.8))
    raw = request_json(
        spec,
        message_id="m" * 32,
        correlation_id="c" * 32,
        client_id="bench-client-3",
        reply_topic="mulambda.inference-results",
        now=now,
        deadline=now + timedelta(seconds=10),
    )
    document = orjson.loads(raw)
    assert document["timestamp"] == "2026-05-09T08:30:00.123Z"
    assert document["deadline"] == "2026-05-09T08:30:10.123Z"
    request = decode(InferenceRequest, raw)
    assert request.message_id == "m" * 32
    assert request.correlation_id == "c" * 32
    assert request.client_id == "bench-client-3"
    assert request.reply_topic == "mulambda.inference-results"
    assert request.reply_partition is None
    assert request.deadline == datetime(2026, 5, 9, 8, 30, 10, 123000, tzinfo=UTC)
    assert request.traits.key() == ("classification", "feature", "confidence")
    assert (request.weights.latency, request.weights.accuracy) == (0.2, 0.8)
    assert request.verb == "predict"
    assert request.body == {"instances": [0, 1]}
    # Nothing in it the model would drop: the JSON is exactly the model's fields.
    assert set(document) <= set(InferenceRequest.model_fields)
