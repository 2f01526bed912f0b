"""Selection leases: sized by demand, spent once per request, ended and released."""

from __future__ import annotations

from typing import Any

import pytest

from mulambda.errors import ConfigurationError
from mulambda.routing.leases import LeaseBook
from mulambda.wire.events import (
    Candidate,
    SelectionReply,
    SelectionStatus,
    SoftWeights,
)
from tests.factories import TRAITS, ranked, routed_request

pytestmark = pytest.mark.unit


def _reply(lease: list[list[int]] | None, *executor_ids: str) -> SelectionReply:
    return SelectionReply(
        correlation_id="c",
        status=SelectionStatus.OK,
        candidates=ranked(*executor_ids),
        lease=lease,
    )


def _ids(ranking: tuple[Candidate, ...] | None) -> list[str] | None:
    return None if ranking is None else [c.executor_id for c in ranking]


def test_a_kind_of_request_seen_once_asks_for_no_lease() -> None:
    book = LeaseBook(max_slots=32, max_age_s=0.1)
    request = routed_request()
    assert book.take(request, 0.0) is None
    assert book.ask(request, 0.0) is None


def test_the_lease_asked_for_is_the_demand_over_the_last_age_capped() -> None:
    book = LeaseBook(max_slots=8, max_age_s=0.1)
    request = routed_request()
    for i in range(5):
        book.take(request, i * 0.01)
    ask = book.ask(request, 0.05)
    assert ask is not None
    assert ask.slots == 5
    assert ask.spacing_ms == pytest.approx(20.0)  # 100 ms over 5
    for i in range(20):
        book.take(request, 0.05 + i * 0.001)
    capped = book.ask(request, 0.07)
    assert capped is not None
    assert capped.slots == 8
    assert capped.spacing_ms == pytest.approx(100 / 25)  # 25 came in the window
    # A window later, the last window's count still stands; two windows later, nothing.
    assert book.ask(request, 0.17) == capped
    book.take(request, 0.5)
    assert book.ask(request, 0.5) is None


def test_leases_off_ask_for_nothing() -> None:
    for book in (LeaseBook(max_slots=1, max_age_s=0.1), LeaseBook(max_slots=8, max_age_s=0)):
        request = routed_request()
        for i in range(10):
            assert book.take(request, i * 0.001) is None
        assert not book.enabled
        assert book.ask(request, 0.01) is None


def test_slots_after_the_first_are_spent_in_order_once_each() -> None:
    book = LeaseBook(max_slots=8, max_age_s=0.1)
    request = routed_request()
    book.grant(request, _reply([[0, 1], [1, 0], [0, 1]], "a", "b"), 0.0)
    assert _ids(book.take(request, 0.01)) == ["b", "a"]
    assert _ids(book.take(request, 0.02)) == ["a", "b"]
    assert book.take(request, 0.03) is None  # spent
    assert list(book.take_released()) == []


def test_a_lease_serves_only_its_kind_of_request() -> None:
    book = LeaseBook(max_slots=8, max_age_s=0.1)
    book.grant(routed_request(), _reply([[0], [0]], "a"), 0.0)
    other = routed_request(weights=SoftWeights(latency=0.9, accuracy=0.1))
    assert book.take(other, 0.01) is None
    assert _ids(book.take(routed_request(client_id="cl-1", input_size=7), 0.01)) == ["a"]


def test_an_expired_lease_is_released_per_first_candidate() -> None:
    book = LeaseBook(max_slots=8, max_age_s=0.1)
    request = routed_request()
    book.grant(request, _reply([[0, 1], [1, 0], [0, 1], [0, 1]], "a", "b"), 0.0)
    assert book.take(request, 0.1) is None  # at its age: over
    assert sorted(book.take_released()) == [("a", 2), ("b", 1)]
    assert list(book.take_released()) == []  # reported once
    book.grant(request, _reply([[0], [0], [0]], "a"), 1.0)
    book.expire(1.05)
    assert len(book) == 1
    book.expire(1.1)
    assert len(book) == 0
    assert list(book.take_released()) == [("a", 2)]


def test_a_failed_executor_ends_the_leases_that_name_it() -> None:
    book = LeaseBook(max_slots=8, max_age_s=1.0)
    one, two = routed_request(client_id="one"), routed_request(client_id="two")
    book.grant(one, _reply([[0, 1], [1, 0]], "a", "b"), 0.0)
    book.grant(two, _reply([[0], [0]], "c"), 0.0)
    assert book.end("b") == 1
    assert book.take(one, 0.1) is None
    assert _ids(book.take(two, 0.1)) == ["c"]
    assert list(book.take_released()) == [("b", 1)]
    book.grant(one, _reply([[0], [0], [0]], "a"), 0.2)
    book.end_all()
    assert len(book) == 0
    assert list(book.take_released()) == [("a", 2)]


def test_a_newer_grant_replaces_and_releases_the_older() -> None:
    book = LeaseBook(max_slots=8, max_age_s=1.0)
    request = routed_request()
    book.grant(request, _reply([[0], [0], [0]], "a"), 0.0)
    book.grant(request, _reply([[0], [0]], "b"), 0.1)
    assert list(book.take_released()) == [("a", 2)]
    assert _ids(book.take(request, 0.2)) == ["b"]


def test_replies_without_a_usable_lease_grant_nothing() -> None:
    book = LeaseBook(max_slots=8, max_age_s=1.0)
    request = routed_request()
    book.grant(request, _reply(None, "a"), 0.0)
    book.grant(request, _reply([[0]], "a"), 0.0)  # the asking request's slot alone
    assert len(book) == 0
    no = SelectionReply(correlation_id="c", status=SelectionStatus.NO_CANDIDATE, lease=[[0]])
    book.grant(request, no, 0.0)
    assert len(book) == 0
    # Slots naming no candidate, or none, are left out; the rest are kept.
    book.grant(request, _reply([[0], [5], [], [0]], "a"), 0.0)
    assert _ids(book.take(request, 0.1)) == ["a"]
    assert book.take(request, 0.1) is None


@pytest.mark.parametrize(
    "arguments",
    [
        {"max_slots": 0, "max_age_s": 0.1},
        {"max_slots": 257, "max_age_s": 0.1},
        {"max_slots": 2, "max_age_s": -1.0},
        {"max_slots": 2, "max_age_s": float("inf")},
        {"max_slots": 2, "max_age_s": 0.1, "max_entries": 0},
    ],
)
def test_settings_out_of_range_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LeaseBook(**arguments)


def test_kinds_of_request_are_bounded() -> None:
    book = LeaseBook(max_slots=8, max_age_s=1.0, max_entries=2)
    for name in ("one", "two", "three"):
        book.grant(routed_request(client_id=name), _reply([[0], [0]], "a"), 0.0)
    assert len(book) == 2
    assert book.take(routed_request(client_id="one"), 0.1) is None  # the oldest forgotten
    assert list(book.take_released()) == [("a", 1)]


def test_registrations_end_the_leases_naming_the_executor_or_ranking_its_traits() -> None:
    book = LeaseBook(max_slots=8, max_age_s=1.0)
    wine, other = routed_request(client_id="one"), routed_request(client_id="two")
    text = routed_request(
        client_id="three",
        traits={"model_type": "sentiment", "input_format": "text", "output_format": "label"},
    )
    for request, name in ((wine, "a"), (other, "b"), (text, "t")):
        book.grant(request, _reply([[0], [0]], name), 0.0)
    # A new executor for the wine traits: both wine leases end, the text one stays.
    assert book.executor_registered("new", TRAITS.key()) == 2
    assert _ids(book.take(text, 0.1)) == ["t"]
    book.grant(text, _reply([[0], [0]], "t"), 0.2)
    assert book.executor_registered("t", None) == 1  # deregistered
    assert len(book) == 0


def test_a_status_ends_leases_when_availability_changes_not_on_every_heartbeat() -> None:
    book = LeaseBook(max_slots=8, max_age_s=1.0)
    one, two = routed_request(client_id="one"), routed_request(client_id="two")
    book.grant(one, _reply([[0, 1], [0, 1]], "a", "b"), 0.0)
    book.grant(two, _reply([[0], [0]], "c"), 0.0)
    assert book.executor_status("a", available=True) == 0  # a heartbeat
    assert book.executor_status("b", available=False) == 1
    assert book.executor_status("b", available=False) == 0  # nothing left naming it
    assert len(book) == 1
    # Available again: it may rank first anywhere, and a status names no traits.
    assert book.executor_status("b", available=True) == 1
    assert len(book) == 0
    book.grant(two, _reply([[0], [0]], "c"), 0.1)
    assert book.executor_status("b", available=True) == 0  # back already
    assert len(book) == 1
