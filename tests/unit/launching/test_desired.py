"""The launcher's desired state: launch requests folded from registrations."""

from __future__ import annotations

import pytest

from mulambda.errors import LaunchError
from mulambda.launching.desired import LaunchBook, check_launch, launch_hash, replica_id
from mulambda.wire.codec import decode, encode
from mulambda.wire.events import ExecutorProtocol, ExecutorRegistration, LaunchSpec
from tests.factories import registration

pytestmark = pytest.mark.unit


def launch(launch_id: str = "wine", replicas: int = 2, **overrides: object) -> ExecutorRegistration:
    return registration(launch_id, launch=LaunchSpec(replicas=replicas), **overrides)


def test_launch_requests_are_kept_and_withdrawn_by_tombstone_or_plain_registration() -> None:
    book = LaunchBook()
    assert book.apply("wine", launch()) is True
    assert book.apply("wine-0", registration("wine-0")) is False  # a replica's own
    assert list(book.launches) == ["wine"]
    assert book.apply("wine", None) is True
    assert book.launches == {}
    assert book.apply("wine", None) is False
    book.apply("wine", launch())
    assert book.apply("wine", registration("wine")) is True  # no spec: withdrawn
    assert book.launches == {}


def test_a_launch_keyed_by_another_id_is_refused() -> None:
    with pytest.raises(LaunchError, match="keyed 'beer'"):
        LaunchBook().apply("beer", launch("wine"))


def test_a_launch_named_like_another_launchs_replica_is_refused() -> None:
    book = LaunchBook()
    book.apply("wine", launch())
    for clashing in ("wine-0", "wine-12"):
        with pytest.raises(LaunchError, match="collides with launch 'wine'"):
            book.apply(clashing, launch(clashing))
    book.apply("wine-x", launch("wine-x"))  # not an ordinal: no replica has that id
    book.apply("wine", launch(replicas=3))  # the same launch again is no collision
    fresh = LaunchBook()
    fresh.apply("beer-1", launch("beer-1"))
    with pytest.raises(LaunchError, match="collides with launch 'beer-1'"):
        fresh.apply("beer", launch("beer"))
    assert sorted(fresh.launches) == ["beer-1"]


def test_only_the_latest_replayed_record_of_a_key_is_handled_again() -> None:
    book = LaunchBook()
    for offset, key in enumerate(["wine", "beer", "wine"]):
        book.note(0, offset, key)
    assert book.superseded(0, 0, "wine") is True
    assert book.superseded(0, 1, "beer") is False
    assert book.superseded(0, 2, "wine") is False
    assert book.superseded(0, 3, "wine") is False  # after the replay: always handled
    assert book.superseded(1, 0, "wine") is False
    assert book.replayed(0, 2) is True
    assert book.replayed(0, 3) is False
    assert book.replayed(1, 0) is False


def test_check_launch_refuses_what_cannot_run() -> None:
    assert check_launch(launch()).replicas == 2
    with pytest.raises(LaunchError, match="no launch spec"):
        check_launch(registration("wine"))
    with pytest.raises(LaunchError, match="TF Serving executors only"):
        check_launch(launch(protocol=ExecutorProtocol.OIP_V2))
    with pytest.raises(LaunchError, match="not a valid executor id"):
        check_launch(launch("w" * 199, replicas=10))
    assert replica_id("wine", 3) == "wine-3"


def test_the_hash_ignores_the_envelope_and_sees_the_spec() -> None:
    first, again = launch(), launch()
    assert first.message_id != again.message_id
    assert launch_hash(first) == launch_hash(again)
    assert launch_hash(first) != launch_hash(launch(replicas=3))


def test_a_newer_producers_unknown_spec_fields_are_ignored() -> None:
    body = encode(launch()).replace(b'"replicas":2', b'"replicas":2,"gpu":"1"')
    assert b'"gpu"' in body
    decoded = decode(ExecutorRegistration, body)
    assert decoded.launch == LaunchSpec(replicas=2)
