"""State records: what each does to the view and what the store must learn, junk included."""

from __future__ import annotations

import pytest

from mulambda.errors import DecodeError
from mulambda.selection.learning import ServiceFit
from mulambda.selection.state import StateApplier, fit_numbers, record_time
from mulambda.selection.store_data import ClientRemoved, ExecutorRemoved, ObservedLatency
from mulambda.selection.view import ExecutorView
from mulambda.wire.catalog import Topic, load_catalog
from mulambda.wire.codec import encode
from mulambda.wire.events import ClientRegistration, LaunchSpec, ModelState, WireModel
from tests.unit.selection.records import WINE, observed, probe, reg, status

pytestmark = pytest.mark.unit

CATALOG = load_catalog("unit.")
REGISTRATIONS = CATALOG.name(Topic.EXECUTOR_REGISTRATIONS)
CLIENTS = CATALOG.name(Topic.CLIENT_REGISTRATIONS)
STATUS = CATALOG.name(Topic.EXECUTOR_STATUS)
LATENCY = CATALOG.name(Topic.LATENCY_MEASUREMENTS)
OBSERVED = CATALOG.name(Topic.OBSERVED_LATENCIES)
CLIENT = ClientRegistration(client_id="c", probe_url="http://c:1/probe")


@pytest.fixture
def applier() -> StateApplier:
    return StateApplier(CATALOG)


def apply(
    applier: StateApplier, view: ExecutorView, topic: str, value: WireModel, at: float
) -> list[object] | None:
    """Apply a message as the worker does, from its bytes (keys matter for tombstones
    only; those are applied directly below)."""
    changes = applier.apply(view, topic, None, applier.decode(topic, encode(value)), at)
    return None if changes is None else list(changes)


# --- time ------------------------------------------------------------------------------


def test_a_record_counts_as_of_its_timestamp_never_later_than_now() -> None:
    assert record_time(90_500, now=100.0) == 90.5
    assert record_time(200_000, now=100.0) == 100.0  # a clock ahead of ours
    assert record_time(0, now=100.0) == 100.0  # no timestamp
    assert record_time(None, now=100.0) == 100.0


# --- decoding --------------------------------------------------------------------------


def test_topics_and_models(applier: StateApplier) -> None:
    assert set(applier.models) == {REGISTRATIONS, CLIENTS, STATUS, LATENCY, OBSERVED}
    assert applier.compacted == {REGISTRATIONS, CLIENTS}


def test_null_is_a_tombstone_only_on_the_compacted_topics(applier: StateApplier) -> None:
    assert applier.decode(REGISTRATIONS, None) is None
    assert applier.decode(CLIENTS, None) is None
    for topic in (STATUS, LATENCY):
        with pytest.raises(DecodeError, match="empty record"):
            applier.decode(topic, None)


def test_junk_and_the_wrong_message_are_refused(applier: StateApplier) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        applier.decode(STATUS, b"{nope")
    with pytest.raises(DecodeError):
        applier.decode(STATUS, encode(reg("a")))  # a registration on the status topic
    heartbeat = status("a")
    assert applier.decode(STATUS, encode(heartbeat)) == heartbeat


# --- applying --------------------------------------------------------------------------


def test_registration_and_its_tombstone(applier: StateApplier) -> None:
    view = ExecutorView()
    registration = reg("a")
    assert apply(applier, view, REGISTRATIONS, registration, 10.0) == [registration]
    entry = view.get("a")
    assert entry is not None
    assert entry.last_seen == 10.0  # a registration is a heartbeat at its record time

    assert applier.apply(view, REGISTRATIONS, b"a", None, 11.0) == [ExecutorRemoved("a")]
    assert view.get("a") is None
    # A tombstone of an unknown executor still tells the store (it may hold one).
    assert applier.apply(view, REGISTRATIONS, b"ghost", None, 11.0) == [ExecutorRemoved("ghost")]


def test_a_launch_request_is_no_executor_and_retires_one_under_its_id(
    applier: StateApplier,
) -> None:
    view = ExecutorView()
    apply(applier, view, REGISTRATIONS, reg("wine"), 10.0)
    assert view.get("wine") is not None
    launch = reg("wine").model_copy(update={"launch": LaunchSpec(replicas=2)})
    # The launched replicas (wine-0, wine-1) register themselves once they run.
    assert apply(applier, view, REGISTRATIONS, launch, 11.0) == [ExecutorRemoved("wine")]
    assert view.get("wine") is None
    assert view.apply_registration(launch, 12.0) is False
    assert view.get("wine") is None
    assert list(view.candidates(WINE, 12.0)) == []


def test_client_registration_and_its_tombstone_forget_its_latencies(
    applier: StateApplier,
) -> None:
    view = ExecutorView()
    assert apply(applier, view, CLIENTS, CLIENT, 0.0) == [CLIENT]
    assert [c.client_id for c in view.clients()] == ["c"]
    apply(applier, view, REGISTRATIONS, reg("a"), 0.0)
    apply(applier, view, LATENCY, probe("a", "c", 5.0), 0.0)

    assert applier.apply(view, CLIENTS, b"c", None, 1.0) == [ClientRemoved("c")]
    assert list(view.clients()) == []
    entry = view.get("a")
    assert entry is not None
    assert entry.probes == {}


def test_a_tombstone_without_a_key_names_nothing(applier: StateApplier) -> None:
    view = ExecutorView()
    apply(applier, view, REGISTRATIONS, reg("a"), 0.0)
    assert applier.apply(view, REGISTRATIONS, None, None, 1.0) is None
    assert view.get("a") is not None


def test_status_is_stored_only_when_the_view_knows_the_executor(applier: StateApplier) -> None:
    view = ExecutorView()
    loading = status("a", ModelState.LOADING)
    assert apply(applier, view, STATUS, loading, 0.0) == []  # unknown: dropped
    apply(applier, view, REGISTRATIONS, reg("a"), 0.0)
    assert apply(applier, view, STATUS, loading, 1.0) == [loading]
    assert view.eliminated_by(WINE, 1.0) == "model_state"


def test_probe_latency_is_stored_as_it_is(applier: StateApplier) -> None:
    view = ExecutorView()
    measurement = probe("a", "c", 7.0)
    assert apply(applier, view, LATENCY, measurement, 0.0) == []  # unknown executor
    apply(applier, view, REGISTRATIONS, reg("a"), 0.0)
    assert apply(applier, view, LATENCY, measurement, 0.0) == [measurement]
    assert view.fallback_latency_ms() == 7.0


def test_observed_latency_is_stored_as_what_it_taught(applier: StateApplier) -> None:
    view = ExecutorView(ewma_alpha=0.5)
    apply(applier, view, REGISTRATIONS, reg("a"), 0.0)
    apply(applier, view, LATENCY, probe("a", "c", 10.0), 0.0)
    apply(applier, view, LATENCY, observed("a", "c", 30.0), 1.0)

    changes = apply(applier, view, LATENCY, observed("a", "c", 50.0), 2.0)

    entry = view.get("a")
    assert entry is not None
    assert entry.service_fit is not None
    assert changes == [
        ObservedLatency(
            "a",
            "c",
            ewma_ms=40.0,  # 30 + 0.5 * (50 - 30), not the raw 50
            service_ms=entry.service_ms,
            service_samples=2,
            service_fit=tuple(entry.service_fit),
        )
    ]


def test_fit_numbers_are_plain_floats() -> None:
    assert fit_numbers(None) is None
    numbers = fit_numbers(ServiceFit(1.0, 2.0, 3.0, 4.0, 5.0))
    assert numbers == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert type(numbers) is tuple


def test_a_fetch_applies_registrations_before_the_statuses_they_arrived_with(
    applier: StateApplier,
) -> None:
    # One fetch, partitions in the order the consumer happened to return them.
    fetched: dict[tuple[str, int], list[WireModel]] = {
        (STATUS, 0): [status("e1")],
        (LATENCY, 1): [],
        (REGISTRATIONS, 0): [reg("e1")],
        (CLIENTS, 0): [CLIENT],
    }

    class Partition(tuple[str, int]):
        @property
        def topic(self) -> str:
            return self[0]

    order = applier.in_apply_order(Partition(key) for key in fetched)
    assert [tp.topic for tp in order[:2]] == [REGISTRATIONS, CLIENTS]
    assert [tp.topic for tp in order[2:]] == [STATUS, LATENCY]
    view = ExecutorView()
    for tp in order:
        for value in fetched[tp]:
            apply(applier, view, tp.topic, value, 1.0)
    e1 = view.get("e1")
    assert e1 is not None
    assert e1.model_state is not None  # the status was not dropped
    # In the consumer's order the status came first and was lost until a next heartbeat.
    unordered = ExecutorView()
    for key, values in fetched.items():
        for value in values:
            apply(applier, unordered, key[0], value, 1.0)
    lost = unordered.get("e1")
    assert lost is not None
    assert lost.model_state is None
