"""The answered-requests filter against the real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from mulambda.routing.answered import AnsweredRequests
from mulambda.wire.events import deadline_in
from tests.conftest import Infra

pytestmark = pytest.mark.integration


async def test_a_marked_request_is_seen_until_its_mark_expires(infra: Infra) -> None:
    prefix = f"test-answered-{uuid.uuid4().hex[:8]}:"
    async with AnsweredRequests(infra.redis_url, key_prefix=prefix, ttl_margin_s=5) as answered:
        assert not await answered.seen("m1")
        await answered.mark("m1", deadline_in(10))
        assert await answered.seen("m1")
        assert not await answered.seen("m2")
        raw = Redis.from_url(infra.redis_url)
        try:
            ttl_ms = await raw.pttl(answered.key("m1"))
            assert 13_000 < ttl_ms <= 15_000
            await raw.delete(answered.key("m1"))
        finally:
            await raw.aclose()
        assert answered.failures == 0


async def test_an_unreachable_redis_lets_requests_through() -> None:
    async with AnsweredRequests("redis://127.0.0.1:1/0", timeout_s=0.2) as answered:
        assert not await answered.seen("m1")
        await answered.mark("m1", deadline_in(10))  # logged, not raised
        assert answered.failures == 2


async def test_calls_made_together_share_one_round_trip_and_keep_their_answers(
    infra: Infra,
) -> None:
    prefix = f"test-answered-{uuid.uuid4().hex[:8]}:"
    async with AnsweredRequests(infra.redis_url, key_prefix=prefix, ttl_margin_s=5) as answered:
        await asyncio.gather(*(answered.mark(f"m{i}", deadline_in(10)) for i in range(0, 50, 2)))
        before = answered.round_trips
        seen = await asyncio.gather(*(answered.seen(f"m{i}") for i in range(50)))
        assert seen == [i % 2 == 0 for i in range(50)]
        assert answered.round_trips - before <= 2  # one pipeline, or two if split by a turn
        assert answered.failures == 0
        raw = Redis.from_url(infra.redis_url)
        try:
            await raw.delete(*(answered.key(f"m{i}") for i in range(0, 50, 2)))
        finally:
            await raw.aclose()
