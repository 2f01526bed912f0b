"""ViewStore against the real Redis: round trips, tombstones, TTL liveness, offsets, scale."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from mulambda.errors import ConfigurationError, StoreUnavailable
from mulambda.selection.store import (
    ClientRemoved,
    ExecutorRemoved,
    ObservedLatency,
    RegistrationAsOf,
    StoreEvent,
    ViewStore,
)
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
)
from tests.conftest import Infra
from tests.factories import registration

pytestmark = pytest.mark.integration


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest_asyncio.fixture
async def raw(infra: Infra) -> AsyncIterator[Redis]:
    """A plain client for looking behind the store's back."""
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def store(infra: Infra) -> AsyncIterator[ViewStore]:
    """A store under a unique prefix; every key under it is deleted afterwards."""
    async with ViewStore(infra.redis_url, key_prefix=_prefix()) as view_store:
        yield view_store
        await view_store.clear()


def _status(executor_id: str, interval: float = 5.0, **kw: object) -> ExecutorStatus:
    fields: dict[str, object] = {
        "executor_id": executor_id,
        "model_state": ModelState.AVAILABLE,
        "heartbeat_interval_s": interval,
    }
    fields.update(kw)
    return ExecutorStatus.model_validate(fields)


def _probe(executor_id: str, client_id: str, ms: float) -> LatencyMeasurement:
    return LatencyMeasurement(executor_id=executor_id, client_id=client_id, latency_ms=ms)


async def test_apply_and_load_round_trip(store: ViewStore) -> None:
    regs = [registration(f"ex-{i}", heartbeat_interval_s=10.0) for i in range(3)]
    client = ClientRegistration(client_id="cl-1", probe_url="http://10.0.0.9:7000/probe")
    busy = _status("ex-1", 10.0, in_flight=4, errors=1)
    loading = _status("ex-2", 10.0, model_state=ModelState.LOADING, detail="warming up")
    events: list[StoreEvent] = [
        *regs,
        client,
        busy,
        loading,
        _probe("ex-0", "cl-1", 3.5),
        _probe("ex-0", "cl-2", 8.0),
        _probe("ex-0", "cl-1", 4.25),  # latest wins
        ObservedLatency("ex-1", "cl-1", ewma_ms=21.5, service_ms=6.5, service_samples=7),
        LatencyMeasurement(
            executor_id="ex-2", client_id="cl-1", latency_ms=30.0, source=LatencySource.OBSERVED
        ),
    ]
    await store.apply_batch(events, offsets={("t.status", 0): 41, ("t.status", 2): 7})

    snap = await store.load()
    assert set(snap.executors) == {"ex-0", "ex-1", "ex-2"}
    assert snap.invalid == {}
    for reg in regs:
        assert snap.executors[reg.executor_id].registration == reg
    ex0, ex1, ex2 = (snap.executors[f"ex-{i}"] for i in range(3))
    assert ex0.status is None  # registered, no status yet, still alive
    assert ex0.age_s is not None  # alive
    assert ex0.probes == {"cl-1": 4.25, "cl-2": 8.0}
    assert ex1.status == busy
    assert ex1.observed == {"cl-1": 21.5}
    assert (ex1.service_ms, ex1.service_samples) == (6.5, 7)
    assert ex2.status == loading
    assert ex2.observed == {"cl-1": 30.0}
    assert ex2.service_ms is None
    for ex in (ex0, ex1, ex2):
        assert ex.ttl_s == pytest.approx(30.0)
        assert ex.ttl_remaining_s is not None
        assert 0 < ex.ttl_remaining_s <= 30.0
        assert ex.age_s is not None
        assert 0 <= ex.age_s < 10.0  # written moments ago
        assert ex.last_seen(1000.0) == pytest.approx(1000.0 - ex.age_s)
    assert snap.clients == {"cl-1": client}
    assert snap.offsets == {("t.status", 0): 41, ("t.status", 2): 7}


async def test_tombstones_remove_everything(store: ViewStore, raw: Redis) -> None:
    await store.apply_batch(
        [
            registration("gone"),
            registration("kept"),
            _status("gone"),
            _probe("gone", "cl-a", 1.0),
            _probe("kept", "cl-a", 2.0),
            _probe("kept", "cl-b", 3.0),
            ObservedLatency("kept", "cl-a", ewma_ms=9.0),
            ClientRegistration(client_id="cl-a", probe_url="http://h:1/p"),
            ClientRegistration(client_id="cl-b", probe_url="http://h:1/p"),
        ]
    )
    await store.apply_batch(
        [
            ExecutorRemoved("gone"),
            registration("new"),  # registered in the same batch as the client tombstone
            _probe("new", "cl-a", 5.0),
            ClientRemoved("cl-a"),
            _probe("new", "cl-b", 6.0),
        ]
    )
    snap = await store.load()
    assert set(snap.executors) == {"kept", "new"}
    assert snap.executors["kept"].probes == {"cl-b": 3.0}
    assert snap.executors["kept"].observed == {}
    assert snap.executors["new"].probes == {"cl-b": 6.0}
    assert set(snap.clients) == {"cl-b"}
    for key in (store.key_exec("gone"), store.key_alive("gone"), store.key_latency("gone")):
        assert await raw.exists(key) == 0, key
    assert await raw.exists(store.key_client("cl-a")) == 0
    assert await store.executor_ids() == ["kept", "new"]
    assert await store.client_ids() == ["cl-b"]


async def _wait_alive(store: ViewStore, executor_id: str, alive: bool, timeout_s: float) -> float:
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        snap = await store.load()
        if (snap.executors[executor_id].age_s is not None) is alive:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{executor_id} never became alive={alive} within {timeout_s}s")


async def test_alive_key_expires_and_heartbeats_refresh_it(infra: Infra, raw: Redis) -> None:
    async with ViewStore(infra.redis_url, key_prefix=_prefix(), missed_heartbeats=2) as store:
        interval = 0.2  # TTL 0.4 s
        await store.apply_batch([registration("hb", heartbeat_interval_s=interval)])
        assert 0 < await raw.pttl(store.key_alive("hb")) <= 400
        # Heartbeats every 0.05 s for well over a TTL keep it alive throughout.
        end = time.monotonic() + 1.0
        beats = 0
        while time.monotonic() < end:
            await store.apply_batch([_status("hb", interval, in_flight=beats)])
            beats += 1
            snap = await store.load()
            assert snap.executors["hb"].age_s is not None
            assert snap.executors["hb"].status is not None
            await asyncio.sleep(0.05)
        # Silence: the alive key expires, the registration stays.
        await _wait_alive(store, "hb", alive=False, timeout_s=5.0)
        stale = (await store.load()).executors["hb"]
        assert stale.status is None
        assert stale.ttl_remaining_s is None
        assert stale.last_seen(100.0) < 100.0 - stale.ttl_s
        assert await raw.exists(store.key_exec("hb")) == 1
        # The next heartbeat revives it.
        await store.apply_batch([_status("hb", interval, in_flight=99)])
        revived = (await store.load()).executors["hb"]
        assert revived.age_s is not None
        assert revived.status is not None
        assert revived.status.in_flight == 99
        await store.clear()


async def test_registration_refreshes_ttl_but_keeps_status(store: ViewStore, raw: Redis) -> None:
    await store.apply_batch([registration("rr", heartbeat_interval_s=1.0)])
    await store.apply_batch([_status("rr", 1.0, in_flight=3)])
    # Simulate time passing, then a re-registration (a restarted companion).
    await raw.pexpire(store.key_alive("rr"), 50)
    await store.apply_batch([registration("rr", heartbeat_interval_s=2.0, accuracy=0.5)])
    ex = (await store.load()).executors["rr"]
    assert ex.registration.accuracy == 0.5
    assert ex.status is not None
    assert ex.status.in_flight == 3
    assert ex.ttl_remaining_s is not None
    assert ex.ttl_remaining_s > 5.0  # 3 x 2 s, not the 50 ms left before


async def test_registration_as_of_an_age_gets_only_the_ttl_left(store: ViewStore) -> None:
    # ttl = 3 x 2 s = 6 s: 1 s old leaves about 5 s; 10 s old leaves nothing.
    await store.apply_batch(
        [
            RegistrationAsOf(registration("young", heartbeat_interval_s=2.0), age_s=1.0),
            RegistrationAsOf(registration("old", heartbeat_interval_s=2.0), age_s=10.0),
        ]
    )
    loaded = (await store.load()).executors
    assert set(loaded) >= {"young", "old"}
    young, old = loaded["young"], loaded["old"]
    assert young.ttl_remaining_s is not None
    assert 4.0 < young.ttl_remaining_s <= 5.0
    assert old.ttl_remaining_s is None
    assert old.age_s is None
    assert old.registration.executor_id == "old"


async def test_service_fit_round_trips_and_a_garbled_one_is_reported(
    store: ViewStore, raw: Redis
) -> None:
    fit = (4.0, 1.5, 20.0, 3.25, -0.75)  # a covariance may be negative
    await store.apply_batch(
        [registration("fit"), ObservedLatency("fit", "c", 30.0, 12.0, 4, service_fit=fit)]
    )
    loaded = (await store.load()).executors["fit"]
    assert loaded.service_fit == fit
    assert (loaded.service_ms, loaded.service_samples) == (12.0, 4)
    await raw.hset(store.key_latency("fit"), "service_fit", "1,2,nan")  # type: ignore[misc]
    snapshot = await store.load()
    assert snapshot.executors["fit"].service_fit is None
    assert any("service_fit" in key for key in snapshot.invalid)


async def test_offsets_survive_a_restart(infra: Infra, store: ViewStore) -> None:
    await store.apply_batch([], offsets={("a.topic", 0): 10, ("a.topic", 1): 20})
    await store.apply_batch([registration("o-1")], offsets={("a.topic", 1): 25, ("b", 0): 1})
    async with ViewStore(infra.redis_url, key_prefix=store.prefix) as again:
        expected = {("a.topic", 0): 10, ("a.topic", 1): 25, ("b", 0): 1}
        assert await again.offsets() == expected
        snap = await again.load()
        assert snap.offsets == expected
        assert set(snap.executors) == {"o-1"}


async def test_undecodable_values_are_skipped_and_reported(store: ViewStore, raw: Redis) -> None:
    await store.apply_batch(
        [
            registration("good"),
            registration("bad"),
            registration("bad-status"),
            _status("bad-status"),
            registration("bad-types"),
            _probe("good", "cl", 2.0),
            ClientRegistration(client_id="cl-x", probe_url="http://h:1/p"),
        ]
    )
    await raw.set(store.key_exec("bad"), b"{not json")
    await raw.set(store.key_alive("bad-status"), b'{"executor_id": 1}', px=60_000)
    await raw.hset(store.key_latency("good"), "p:weird", "NaN")  # type: ignore[misc]
    await raw.set(store.key_client("cl-x"), b"[]")
    await raw.sadd(f"{store.prefix}execs", "ghost")  # type: ignore[misc]
    # Keys holding another type than the store writes (a foreign writer).
    await raw.set(store.key_latency("bad-types"), b"a string, not a hash")
    await raw.delete(store.key_alive("bad-types"))
    await raw.rpush(store.key_alive("bad-types"), b"a list")  # type: ignore[misc]
    snap = await store.load()
    assert set(snap.executors) == {"good", "bad-status", "bad-types"}
    assert snap.executors["bad-types"].age_s is None  # stale: its alive key is unreadable
    assert snap.executors["bad-types"].probes == {}
    assert snap.executors["good"].probes == {"cl": 2.0}
    assert snap.executors["bad-status"].status is None
    assert snap.executors["bad-status"].age_s is not None
    assert snap.clients == {}
    assert set(snap.invalid) == {
        store.key_exec("bad"),
        store.key_exec("ghost"),
        store.key_alive("bad-status"),
        f"{store.key_latency('good')}#p:weird",
        store.key_client("cl-x"),
        store.key_latency("bad-types"),
        store.key_alive("bad-types"),
    }
    assert "WRONGTYPE" in snap.invalid[store.key_latency("bad-types")]
    assert "not valid JSON" in snap.invalid[store.key_exec("bad")]


async def test_ten_thousand_executors_load_completely(store: ViewStore) -> None:
    n = 10_000
    events: list[StoreEvent] = []
    for i in range(n):
        eid = f"big-{i:05d}"
        events.append(registration(eid, heartbeat_interval_s=30.0, accuracy=(i % 100) / 100))
        if i % 2 == 0:
            events.append(_status(eid, 30.0, in_flight=i % 7))
        events.append(_probe(eid, f"cl-{i % 5}", float(i % 50)))
    for start in range(0, len(events), 5000):
        await store.apply_batch(events[start : start + 5000], offsets={("s", 0): start})
    snap = await store.load()
    assert len(snap.executors) == n
    assert snap.invalid == {}
    for i in (0, 1, 4321, 9998, 9999):
        ex = snap.executors[f"big-{i:05d}"]
        assert ex.registration.accuracy == (i % 100) / 100
        assert ex.probes == {f"cl-{i % 5}": float(i % 50)}
        assert ex.age_s is not None
        if i % 2 == 0:
            assert ex.status is not None
            assert ex.status.in_flight == i % 7
        else:
            assert ex.status is None
    assert sum(1 for ex in snap.executors.values() if ex.status is not None) == n // 2
    assert snap.offsets == {("s", 0): (len(events) - 1) // 5000 * 5000}  # the last batch's


async def test_clear_deletes_its_prefix_only(store: ViewStore, raw: Redis) -> None:
    await store.apply_batch([registration("p-1"), _probe("p-1", "c", 1.0)])
    # A key of another prefix that glob-matches ours unescaped survives clear().
    other = store.prefix.rstrip(":") + "*:x"
    await raw.set(other, b"1")
    try:
        assert await store.clear() >= 3
        assert [k async for k in raw.scan_iter(match=store.prefix.replace("*", r"\*") + "*")] == []
        assert await raw.exists(other) == 1
    finally:
        await raw.delete(other)


async def test_unreachable_redis_fails_fast() -> None:
    started = time.monotonic()
    store = ViewStore("redis://127.0.0.1:1/0", key_prefix="x:", connect_timeout_s=1.0)
    with pytest.raises(StoreUnavailable) as info:
        await store.start()
    assert info.value.retriable
    assert "unreachable" in str(info.value)
    assert time.monotonic() - started < 10  # bounded; generous for a noisy machine
    await store.stop()  # idempotent on a store that never started


async def test_server_refusal_is_not_retriable(store: ViewStore, raw: Redis) -> None:
    await raw.set(f"{store.prefix}execs", b"a string, not a set")
    with pytest.raises(StoreUnavailable) as info:
        await store.apply_batch([registration("wrongtype")])
    assert not info.value.retriable
    assert "WRONGTYPE" in str(info.value)


async def test_only_db_zero(infra: Infra) -> None:
    url = infra.redis_url.rsplit("/", 1)[0] + "/3"
    with pytest.raises(ConfigurationError, match="DB 0"):
        await ViewStore(url, key_prefix="x:").start()


async def test_given_client_is_left_open(infra: Infra, raw: Redis) -> None:
    async with ViewStore(raw, key_prefix=_prefix()) as store:
        await store.apply_batch([registration("shared")])
        assert await store.executor_ids() == ["shared"]
        await store.clear()
    assert await raw.ping()
