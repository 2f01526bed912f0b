"""Suspect endpoints: which failures make one, how long it lasts, what is tried next.

Time is a number the tests pass in; nothing sleeps.
"""

from __future__ import annotations

import pytest

from mulambda.errors import ConfigurationError, MulambdaError, RequestTimeout
from mulambda.protocols.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorUnavailable,
    GarbageResponse,
)
from mulambda.routing.suspects import SuspectEndpoints, endpoint_of, is_unreachable
from mulambda.wire.events import Candidate

pytestmark = pytest.mark.unit


def _at(executor_id: str, endpoint: str) -> Candidate:
    return Candidate(
        executor_id=executor_id, endpoint=endpoint, model_name="m", score=1.0, accuracy=0.9
    )


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://10.0.0.5:8501", "http://10.0.0.5:8501"),
        ("http://10.0.0.5:8501/", "http://10.0.0.5:8501"),
        ("http://10.0.0.5:8501/prefix/v1", "http://10.0.0.5:8501"),
        ("HTTP://Executor-A", "http://executor-a:80"),
        ("https://executor-a", "https://executor-a:443"),
        ("http://user@executor-a:9000", "http://executor-a:9000"),
        ("http://[::1]:8501/x", "http://[::1]:8501"),
        ("not a url", "not a url"),
        ("ftp://executor-a", "ftp://executor-a"),
        ("http://executor-a:99999", "http://executor-a:99999"),  # bad port: itself
    ],
)
def test_an_endpoint_is_scheme_host_and_port(url: str, endpoint: str) -> None:
    assert endpoint_of(url) == endpoint


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (ExecutorUnavailable("ClientConnectorError: connection refused", status=None), True),
        (ExecutorUnavailable("ServerDisconnectedError", status=None), True),
        (ExecutorUnavailable("HTTP 503: busy"), False),
        (ExecutorUnavailable("HTTP 502: bad gateway", status=502), False),
        (DeadlineExceeded("no answer within 10s", status=None), False),
        (GarbageResponse("malformed HTTP response", status=None), False),
        (BadRequest("HTTP 400"), False),
        (RequestTimeout("no reply"), False),
    ],
)
def test_only_a_connection_without_any_response_is_unreachable(
    error: MulambdaError, unreachable: bool
) -> None:
    assert is_unreachable(error) is unreachable


def test_a_marked_endpoint_is_suspect_until_its_expiry() -> None:
    suspects = SuspectEndpoints(expiry_s=5)
    suspects.mark("http://a:1", 100.0)
    assert suspects.is_suspect("http://a:1", 100.0)
    assert suspects.is_suspect("http://a:1", 104.9)
    assert not suspects.is_suspect("http://b:1", 100.0)
    assert not suspects.is_suspect("http://a:1", 105.0)
    assert len(suspects) == 0  # the expired entry went when looked up


def test_a_new_failure_extends_the_suspicion() -> None:
    suspects = SuspectEndpoints(expiry_s=5)
    suspects.mark("http://a:1", 100.0)
    suspects.mark("http://a:1", 103.0)
    assert suspects.is_suspect("http://a:1", 107.0)
    assert not suspects.is_suspect("http://a:1", 108.0)


def test_a_success_clears_the_suspicion() -> None:
    suspects = SuspectEndpoints(expiry_s=5)
    suspects.mark("http://a:1", 100.0)
    suspects.clear("http://a:1")
    suspects.clear("http://never-marked:1")
    assert not suspects.is_suspect("http://a:1", 100.0)


def test_suspects_lists_the_live_ones_oldest_first() -> None:
    suspects = SuspectEndpoints(expiry_s=5)
    suspects.mark("http://a:1", 100.0)
    suspects.mark("http://b:1", 102.0)
    suspects.mark("http://c:1", 103.0)
    assert suspects.suspects(104.0) == ["http://a:1", "http://b:1", "http://c:1"]
    assert suspects.suspects(106.0) == ["http://b:1", "http://c:1"]
    assert len(suspects) == 2


def test_memory_is_bounded_oldest_suspicion_forgotten_first() -> None:
    suspects = SuspectEndpoints(expiry_s=60, max_entries=3)
    for n in range(5):
        suspects.mark(f"http://e{n}:1", 100.0 + n)
    assert len(suspects) == 3
    assert suspects.suspects(105.0) == ["http://e2:1", "http://e3:1", "http://e4:1"]


def test_marking_prunes_expired_entries() -> None:
    suspects = SuspectEndpoints(expiry_s=1)
    for n in range(100):
        suspects.mark(f"http://e{n}:1", float(n))
    assert len(suspects) == 1  # each mark dropped the ones expired by then


def test_expiry_zero_never_suspects() -> None:
    suspects = SuspectEndpoints(expiry_s=0)
    suspects.mark("http://a:1", 100.0)
    assert not suspects.is_suspect("http://a:1", 100.0)
    assert len(suspects) == 0


def test_pick_prefers_the_best_ranked_candidate_elsewhere() -> None:
    suspects = SuspectEndpoints(expiry_s=5)
    suspects.mark("http://a:1", 100.0)
    ranked = [_at("a1", "http://a:1/"), _at("a2", "http://A:1"), _at("b1", "http://b:1")]
    assert suspects.pick(ranked, 101.0) == 2
    assert suspects.pick(ranked[:2], 101.0) == 0  # only suspects left: rank order
    assert suspects.pick(ranked, 105.0) == 0  # expired
    assert suspects.pick([], 101.0) is None


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ConfigurationError, match="expiry"):
        SuspectEndpoints(expiry_s=-1)
    with pytest.raises(ConfigurationError, match="max suspect endpoints"):
        SuspectEndpoints(expiry_s=1, max_entries=0)
