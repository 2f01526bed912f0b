"""Observed calls batched per executor: in order, bounded, released slots carried."""

from __future__ import annotations

import pytest

from mulambda.routing.observations import ObservationBatcher
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES, decode, encode
from mulambda.wire.events import MAX_OBSERVED_SAMPLES, ObservedLatencies

pytestmark = pytest.mark.unit


def test_calls_are_batched_per_executor_in_the_order_they_ended() -> None:
    batcher = ObservationBatcher(router_id="r1")
    assert not batcher
    batcher.observed("a", "cl-1", 5.0, 2)
    batcher.observed("b", "cl-1", 9.0, None, failed=True)
    batcher.observed("a", "cl-2", 7.0, 3)
    batcher.released("b", 2)
    batcher.released("c", 0)  # nothing to say
    assert batcher
    a, b = batcher.drain()
    assert not batcher
    assert batcher.drain() == []
    assert (a.executor_id, a.router_id, a.released) == ("a", "r1", 0)
    assert [(s.client_id, s.latency_ms, s.input_size, s.failed) for s in a.samples] == [
        ("cl-1", 5.0, 2, False),
        ("cl-2", 7.0, 3, False),
    ]
    assert (b.executor_id, b.released, [s.failed for s in b.samples]) == ("b", 2, [True])


def test_a_full_batch_is_handed_over_at_once() -> None:
    batcher = ObservationBatcher(router_id="r1", max_samples=3)
    assert batcher.observed("a", "c", 1.0, 1) is None
    assert batcher.observed("a", "c", 2.0, 1) is None
    full = batcher.observed("a", "c", 3.0, 1)
    assert full is not None
    assert [s.latency_ms for s in full.samples] == [1.0, 2.0, 3.0]
    assert not batcher


def test_the_largest_batch_fits_a_state_record() -> None:
    batcher = ObservationBatcher(router_id="r" * 200)
    client = "c" * 200  # the longest id
    full = None
    for i in range(MAX_OBSERVED_SAMPLES):
        full = batcher.observed("e" * 200, client, 3_599_999.123456 - i, 1_000_000_000, failed=True)
    assert full is not None
    data = encode(full)
    assert len(data) <= MAX_STATE_RECORD_BYTES
    assert decode(ObservedLatencies, data, max_bytes=MAX_STATE_RECORD_BYTES) == full
