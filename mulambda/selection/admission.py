"""Which executor-registration records a selector applies: signatures and endpoints.

Pure logic behind the selector's registration stream. :class:`RegistrationGate` admits
a record, a registration or a tombstone, or raises :class:`UntrustedRecord` with the
reason (the worker dead-letters it and leaves its view alone):

* **Key and id agree**: a registration's record key is its ``executor_id`` (compaction
  and tombstones work per key, so a registration filed under another key could never be
  deregistered by its own id); a tombstone names its id by its key.
* **Signature**, when the deployment has a registration secret: the record carries a
  valid signature by that executor's key (:mod:`mulambda.wire.signatures`), signed later
  than the record in force for the id, so an old signed registration or tombstone
  replayed onto the topic is refused. (A companion restarted on a host whose clock is
  behind the previous signer's by more than the restart took is refused too: keep
  clocks synchronised.)
* **Endpoint allow-list** (:class:`EndpointAllowList`), when configured: a registration's
  endpoint host is an IP address in one of the allowed networks or a host name matching
  one of the allowed names (``*.svc.cluster.local`` covers its subdomains), so a
  registration cannot point routers at arbitrary addresses. Names are matched as
  written: resolution is DNS's, so allow names only in zones you control.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from mulambda.errors import ConfigurationError, UntrustedRecord
from mulambda.wire.events import ExecutorRegistration
from mulambda.wire.signatures import (
    MalformedSignature,
    Signature,
    executor_key,
    signature_header,
    verifies,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EndpointAllowList:
    """Hosts and networks executor endpoints may point at; empty allows every endpoint."""

    def __init__(self, entries: Sequence[str] = ()) -> None:
        """``entries``: CIDRs or addresses (``10.0.0.0/8``, ``::1``), host names
        (``executor-1.internal``) or wildcards (``*.svc.cluster.local``)."""
        self.networks: list[IPNetwork] = []
        self.names: list[str] = []
        self.suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.removeprefix("*.")
            if not name or "/" in name or "*" in name or ":" in name:
                raise ConfigurationError(
                    f"endpoint allow-list entry {raw!r} is neither a CIDR nor a host name"
                )
            (self.suffixes if entry.startswith("*.") else self.names).append(name)

    @classmethod
    def parse(cls, text: str) -> EndpointAllowList:
        """From a comma-separated setting."""
        return cls(text.split(","))

    @property
    def allows_all(self) -> bool:
        """Whether nothing is configured (every endpoint allowed)."""
        return not (self.networks or self.names or self.suffixes)

    def problem(self, endpoint: str) -> str | None:
        """Why ``endpoint`` is not allowed, or None when it is."""
        if self.allows_all:
            return None
        try:
            host = (urlsplit(endpoint).hostname or "").lower()
        except ValueError:
            host = ""
        if not host:
            return f"endpoint {endpoint!r} names no host"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.rstrip(".")
            if name in self.names or any(name.endswith(f".{s}") for s in self.suffixes):
                return None
        else:
            if any(address in network for network in self.networks):
                return None
        return f"endpoint {endpoint} is outside the allowed executor hosts and networks"


class RegistrationGate:
    """Admits executor-registration records (see the module docstring).

    Stateful only in the signing time in force per executor id, which records must
    exceed; records must therefore be checked in topic order.
    """

    def __init__(self, secret: bytes | None = None, allow: EndpointAllowList | None = None) -> None:
        self._secret = secret
        self._allow = allow or EndpointAllowList()
        self._in_force: dict[str, int] = {}

    @property
    def verifies_signatures(self) -> bool:
        """Whether a registration secret is configured."""
        return self._secret is not None

    def admit(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | None,
        registration: ExecutorRegistration | None,
    ) -> None:
        """Check one record (``registration`` None: a tombstone, ``value`` None);
        UntrustedRecord with the reason when it must not be applied."""
        if key is None:
            raise UntrustedRecord("executor registration record without a key")
        executor_id = key.decode(errors="replace")
        if registration is not None and registration.executor_id != executor_id:
            raise UntrustedRecord(
                f"record key {executor_id!r} differs from the registration's executor_id "
                f"{registration.executor_id!r}"
            )
        what = "registration" if registration is not None else "deregistration (tombstone)"
        signature = self._verified(executor_id, key, value, headers, what)
        # A launch request names no endpoint of its own: its replicas register theirs.
        if registration is not None and registration.launch is None:
            problem = self._allow.problem(registration.endpoint)
            if problem is not None:
                raise UntrustedRecord(f"registration of {executor_id}: {problem}")
        if signature is not None:
            self._in_force[executor_id] = signature.signed_at_ms

    def _verified(
        self,
        executor_id: str,
        key: bytes,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | None,
        what: str,
    ) -> Signature | None:
        if self._secret is None:
            return None
        header = signature_header(headers)
        if header is None:
            raise UntrustedRecord(f"unsigned {what} of {executor_id}: registrations are signed")
        try:
            signature = Signature.parse(header)
        except MalformedSignature as exc:
            raise UntrustedRecord(f"{what} of {executor_id}: {exc}") from None
        if not verifies(executor_key(self._secret, executor_id), key, value, signature):
            raise UntrustedRecord(
                f"{what} of {executor_id}: signature does not verify (not signed with "
                "this executor's key, or the record was altered)"
            )
        if signature.signed_at_ms <= self._in_force.get(executor_id, -1):
            raise UntrustedRecord(
                f"{what} of {executor_id}: signed at {signature.signed_at_ms} ms, not after "
                f"the record in force ({self._in_force[executor_id]} ms): a replay"
            )
        return signature


__all__ = ["EndpointAllowList", "RegistrationGate"]
