"""Signed executor registrations: who may register, and deregister, an executor id.

Anyone who can write the executor-registrations topic could otherwise announce an
endpoint under any id and receive every matching client's data, or tombstone another
executor away. MuLambda's answer, chosen because it works on any broker (the plaintext
quick start included) and needs no per-executor broker principal, is an HMAC-SHA256
signature in a record header:

* The deployment has one **registration secret**, held by the selectors (and by the
  administrator's CLI). Each executor's **key** is derived from it and its id
  (:func:`executor_key`: HMAC of the secret over the id), so a companion holds only its
  own key (``mulambda executors key ID`` prints it, for a Kubernetes Secret) and cannot
  sign for any other id, and selectors need no table of keys.
* A companion signs the record it publishes, a registration and equally the tombstone
  that deregisters (a null value carries no proof, so the proof travels in the
  ``mulambda-signature`` header): ``v1;t=<signed at, epoch ms>;<hex digest>`` over the
  record key, the signing time and the value bytes (or a tombstone marker)
  (:func:`sign`).
* A selector with the secret verifies every record on the topic
  (:class:`mulambda.selection.admission.RegistrationGate`): unsigned, wrongly signed and
  replayed records (signed no later than the one in force for that id) are not applied
  and are dead-lettered with the reason.

What this does not cover, and where that is handled: a writer of the topic can still
deny service (flood it, or let compaction keep only its junk for a key), and unsigned
status and latency records can skew rankings, though they cannot redirect traffic:
broker ACLs (the secured broker) restrict who writes at all. Without a configured
secret nothing is verified (the quick start); the endpoint allow-list applies either way.

Pure: :mod:`hmac` and :mod:`hashlib` only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

SIGNATURE_HEADER: Final = "mulambda-signature"
"""Record header carrying a registration's (or tombstone's) signature."""

_VERSION: Final = "v1"
_KEY_CONTEXT: Final = b"mulambda executor key v1\x00"
_RECORD_CONTEXT: Final = b"mulambda executor registration v1\x00"


class MalformedSignature(ValueError):
    """A signature header that is not ``v1;t=<ms>;<hex>``."""


def executor_key(secret: bytes, executor_id: str) -> bytes:
    """The signing key of ``executor_id`` under the deployment's registration secret."""
    return hmac.new(secret, _KEY_CONTEXT + executor_id.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Signature:
    """When a record was signed, and the digest."""

    signed_at_ms: int
    digest: bytes

    def header(self) -> tuple[str, bytes]:
        """The record header that carries this signature."""
        return SIGNATURE_HEADER, f"{_VERSION};t={self.signed_at_ms};{self.digest.hex()}".encode()

    @classmethod
    def parse(cls, header: bytes) -> Signature:
        """Read a header value; MalformedSignature when it is not one of ours."""
        try:
            version, stamp, digest = header.decode("ascii").split(";")
            if version != _VERSION or not stamp.startswith("t="):
                raise ValueError(version)
            signed_at = int(stamp.removeprefix("t="), 10)
            raw = bytes.fromhex(digest)
        except (UnicodeDecodeError, ValueError):
            raise MalformedSignature(
                f"signature header is not {_VERSION};t=<ms>;<hex>: {header[:120]!r}"
            ) from None
        if signed_at < 0 or len(raw) != hashlib.sha256().digest_size:
            raise MalformedSignature(f"signature header out of range: {header[:120]!r}")
        return cls(signed_at, raw)


def _message(record_key: bytes, value: bytes | None, signed_at_ms: int) -> bytes:
    # Length-prefixed key and an explicit tombstone marker: no two records share bytes.
    body = b"T" if value is None else b"R" + value
    return b"%s%d\x00%d:%s\x00%s" % (
        _RECORD_CONTEXT,
        signed_at_ms,
        len(record_key),
        record_key,
        body,
    )


def sign(key: bytes, record_key: bytes, value: bytes | None, signed_at_ms: int) -> Signature:
    """Sign one record (``value`` None: a tombstone) as of ``signed_at_ms``."""
    digest = hmac.new(key, _message(record_key, value, signed_at_ms), hashlib.sha256).digest()
    return Signature(signed_at_ms, digest)


def verifies(key: bytes, record_key: bytes, value: bytes | None, signature: Signature) -> bool:
    """Whether ``signature`` was made with ``key`` over exactly this record."""
    expected = sign(key, record_key, value, signature.signed_at_ms)
    return hmac.compare_digest(expected.digest, signature.digest)


def signature_header(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The signature header's value among a record's headers, if there is one."""
    for name, value in headers or ():
        if name == SIGNATURE_HEADER:
            return value
    return None


__all__ = [
    "SIGNATURE_HEADER",
    "MalformedSignature",
    "Signature",
    "executor_key",
    "sign",
    "signature_header",
    "verifies",
]
