"""Signatures of executor-registration records: keys per executor, records bound exactly."""

from __future__ import annotations

import pytest

from mulambda.wire.signatures import (
    SIGNATURE_HEADER,
    MalformedSignature,
    Signature,
    executor_key,
    sign,
    signature_header,
    verifies,
)

pytestmark = pytest.mark.unit

SECRET = b"deployment secret"


def test_each_executor_has_its_own_key_derived_from_the_secret() -> None:
    assert executor_key(SECRET, "ex-1") == executor_key(SECRET, "ex-1")
    assert executor_key(SECRET, "ex-1") != executor_key(SECRET, "ex-2")
    assert executor_key(SECRET, "ex-1") != executor_key(b"other secret", "ex-1")
    assert len(executor_key(SECRET, "ex-1")) == 32


def test_a_signature_binds_key_value_time_and_tombstone() -> None:
    key = executor_key(SECRET, "ex-1")
    signature = sign(key, b"ex-1", b'{"a":1}', 1000)
    assert verifies(key, b"ex-1", b'{"a":1}', signature)
    assert not verifies(key, b"ex-1", b'{"a":2}', signature)  # value altered
    assert not verifies(key, b"ex-2", b'{"a":1}', signature)  # another id
    assert not verifies(key, b"ex-1", None, signature)  # not a tombstone's
    assert not verifies(key, b"ex-1", b'{"a":1}', Signature(1001, signature.digest))
    assert not verifies(executor_key(SECRET, "ex-2"), b"ex-1", b'{"a":1}', signature)
    tombstone = sign(key, b"ex-1", None, 1000)
    assert verifies(key, b"ex-1", None, tombstone)
    assert not verifies(key, b"ex-1", b"", tombstone)  # an empty value is not a tombstone
    # The key's length is part of the message: moving bytes between key and value fails.
    assert not verifies(key, b"ex-1T", None, sign(key, b"ex-1", b"T", 1000))


def test_the_header_round_trips_and_malformed_ones_are_named() -> None:
    signature = sign(b"k", b"ex-1", b"v", 1_700_000_000_000)
    name, value = signature.header()
    assert name == SIGNATURE_HEADER
    assert value.startswith(b"v1;t=1700000000000;")
    assert Signature.parse(value) == signature
    assert signature_header([("other", b"x"), (name, value)]) == value
    assert signature_header(None) is None
    for bad in [b"", b"v2;t=1;" + b"00" * 32, b"v1;1;" + b"00" * 32, b"v1;t=x;00", b"\xff"]:
        with pytest.raises(MalformedSignature):
            Signature.parse(bad)
    with pytest.raises(MalformedSignature, match="out of range"):
        Signature.parse(b"v1;t=5;abcd")
