"""What a selector admits from executor-registrations: keys, signatures, endpoints."""

from __future__ import annotations

import pytest

from mulambda.errors import ConfigurationError, UntrustedRecord
from mulambda.selection.admission import EndpointAllowList, RegistrationGate
from mulambda.wire.codec import encode
from mulambda.wire.events import ExecutorRegistration, LaunchSpec
from mulambda.wire.signatures import executor_key, sign
from tests.factories import registration

pytestmark = pytest.mark.unit

SECRET = b"deployment secret"


def signed(
    reg: ExecutorRegistration | None, executor_id: str, at_ms: int, secret: bytes = SECRET
) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    value = None if reg is None else encode(reg)
    key = executor_id.encode()
    header = sign(executor_key(secret, executor_id), key, value, at_ms).header()
    return key, value, [header]


def test_without_a_secret_only_key_and_id_must_agree() -> None:
    gate = RegistrationGate()
    reg = registration("ex-1")
    gate.admit(b"ex-1", encode(reg), None, reg)
    gate.admit(b"ex-1", None, None, None)  # an unsigned tombstone is fine here
    with pytest.raises(UntrustedRecord, match="record key 'ex-2' differs"):
        gate.admit(b"ex-2", encode(reg), None, reg)
    with pytest.raises(UntrustedRecord, match="without a key"):
        gate.admit(None, encode(reg), None, reg)


def test_with_a_secret_signed_records_are_admitted_in_signing_order() -> None:
    gate = RegistrationGate(SECRET)
    reg = registration("ex-1")
    gate.admit(*signed(reg, "ex-1", 1000), reg)
    gate.admit(*signed(None, "ex-1", 2000), None)  # a signed deregistration
    gate.admit(*signed(reg, "ex-1", 3000), reg)
    with pytest.raises(UntrustedRecord, match="a replay"):
        gate.admit(*signed(None, "ex-1", 2000), None)  # the old tombstone again
    with pytest.raises(UntrustedRecord, match="a replay"):
        gate.admit(*signed(reg, "ex-1", 3000), reg)
    gate.admit(*signed(registration("ex-2"), "ex-2", 10), registration("ex-2"))  # per id


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("unsigned", "unsigned registration of ex-1"),
        ("unsigned tombstone", r"unsigned deregistration \(tombstone\) of ex-1"),
        ("other key", "signature does not verify"),
        ("other secret", "signature does not verify"),
        ("altered", "signature does not verify"),
        ("garbage header", "signature header is not"),
    ],
)
def test_with_a_secret_what_fails_is_refused_with_the_reason(record: str, reason: str) -> None:
    gate = RegistrationGate(SECRET)
    reg = registration("ex-1")
    key, value, headers = signed(reg, "ex-1", 1000)
    current: ExecutorRegistration | None = reg
    if record == "unsigned":
        headers = []
    elif record == "unsigned tombstone":
        value, headers, current = None, [], None
    elif record == "other key":
        # ex-2's companion signing for ex-1: its own key does not verify for ex-1.
        other = sign(executor_key(SECRET, "ex-2"), key, value, 1000)
        headers = [other.header()]
    elif record == "other secret":
        key, value, headers = signed(reg, "ex-1", 1000, secret=b"guess")
    elif record == "altered":
        current = registration("ex-1", endpoint="http://evil.example:80")
        value = encode(current)
    else:
        headers = [("mulambda-signature", b"trust me")]
    with pytest.raises(UntrustedRecord, match=reason):
        gate.admit(key, value, headers, current)


def test_endpoint_allow_list_hosts_networks_and_wildcards() -> None:
    allow = EndpointAllowList.parse(
        "10.0.0.0/8, 127.0.0.1, ::1, exec.internal, *.svc.cluster.local"
    )
    for ok in [
        "http://10.1.2.3:8501",
        "http://127.0.0.1:8501/prefix",
        "http://[::1]:8501",
        "https://EXEC.internal",
        "http://wine.models.svc.cluster.local:8501",
    ]:
        assert allow.problem(ok) is None, ok
    for bad in [
        "http://11.0.0.1:8501",
        "http://127.0.0.2",
        "http://evil.example",
        "http://svc.cluster.local.evil.example",
        "http://exec.internal.evil.example",
        "http://xsvc.cluster.local",
    ]:
        assert "outside the allowed" in (allow.problem(bad) or ""), bad
    assert EndpointAllowList().problem("http://anything:1") is None
    assert EndpointAllowList.parse("").allows_all


@pytest.mark.parametrize("entry", ["*", "http://x", "a*b.example", "*."])
def test_bad_allow_list_entries_are_configuration_errors(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="neither a CIDR nor a host name"):
        EndpointAllowList([entry])


def test_a_registration_outside_the_allow_list_is_refused_and_not_in_force() -> None:
    gate = RegistrationGate(SECRET, EndpointAllowList(["10.0.0.0/8"]))
    outside = registration("ex-1", endpoint="http://192.168.1.5:8501")
    with pytest.raises(UntrustedRecord, match=r"registration of ex-1: endpoint .* outside"):
        gate.admit(*signed(outside, "ex-1", 1000), outside)
    inside = registration("ex-1", endpoint="http://10.0.0.5:8501")
    gate.admit(*signed(inside, "ex-1", 1000), inside)  # the refused one set no time
    gate.admit(*signed(None, "ex-1", 1001), None)  # tombstones carry no endpoint


def test_a_launch_request_names_no_endpoint_so_the_allow_list_leaves_it_alone() -> None:
    gate = RegistrationGate(SECRET, EndpointAllowList(["10.0.0.0/8"]))
    launch = registration("wine", endpoint="http://launch.invalid", launch=LaunchSpec(replicas=2))
    gate.admit(*signed(launch, "wine", 1000), launch)
    forged = registration("wine", endpoint="http://launch.invalid", launch=LaunchSpec(replicas=3))
    value = encode(forged)
    by_another = sign(executor_key(SECRET, "other"), b"wine", value, 1001).header()
    with pytest.raises(UntrustedRecord, match="signature does not verify"):
        gate.admit(b"wine", value, [by_another], forged)
