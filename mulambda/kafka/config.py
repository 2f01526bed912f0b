"""How to reach the cluster, and the one way to start and close an aiokafka client.

:class:`KafkaConfig` turns settings into client arguments; :func:`start_bounded` starts
any aiokafka client within a timeout; :func:`start_consumer` is the only place a
consumer is built, so every reader gets the same commit and fetch-size settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)

from mulambda.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    KafkaUnavailable,
    MulambdaError,
)
from mulambda.kafka.backoff import pause_failed_metadata_refreshes
from mulambda.kafka.coordinators import forget_unreachable_coordinators
from mulambda.runtime.settings import Settings
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES

KafkaConsumer: TypeAlias = AIOKafkaConsumer
"""The consumer client :func:`start_consumer` returns (workers need not import aiokafka)."""

SASL_API_VERSION: Final = "2.6.0"
"""The Kafka API version aiokafka assumes on SASL connections (see client_kwargs)."""

FRAMING_HEADROOM_BYTES = 65536
"""Room above the largest record allowed for the batch framing around it (fetch and produce)."""


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """How to reach the cluster; built from Settings by runners, explicit everywhere else."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    request_timeout_s: float = 10.0
    client_id: str = "mulambda"

    @classmethod
    def from_settings(cls, settings: Settings, client_id: str = "mulambda") -> KafkaConfig:
        """Read the Kafka fields of the process settings."""
        pwd = settings.kafka_sasl_password
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=pwd.get_secret_value() if pwd else None,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            request_timeout_s=settings.kafka_request_timeout_s,
            client_id=client_id,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ConfigurationError("SASL needs mechanism, username and password")
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
                # With "auto", aiokafka authenticates its bootstrap connection before it
                # knows the broker's API versions, with unframed SASL tokens: a refused
                # password then looks like a dropped connection. A known version makes
                # it use SaslAuthenticate, whose refusal carries the broker's reason.
                # 2.6 is what "auto" detects on every broker since 2.6 (Kafka 3.9 here).
                "api_version": SASL_API_VERSION,
            }
        if self.security_protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kwargs["ssl_context"] = context
        return kwargs


AUTHORIZATION_ERRORS: Final = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
"""aiokafka's errors for an operation an ACL does not allow."""

AUTHENTICATION_ERRORS: Final = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    IllegalSaslStateError,
    UnsupportedSaslMechanismError,
    ssl.SSLError,
)
"""aiokafka's (and TLS's) errors for credentials or a certificate the broker refused."""


def access_error(exc: BaseException, what: str) -> MulambdaError | None:
    """The AuthorizationError / AuthenticationError ``exc`` stands for, if it is one."""
    if isinstance(exc, AUTHORIZATION_ERRORS):
        return AuthorizationError(
            f"{what}: not authorised by the cluster's ACLs ({_describe(exc)})"
        )
    if isinstance(exc, AUTHENTICATION_ERRORS):
        return AuthenticationError(f"{what}: Kafka refused the credentials ({_describe(exc)})")
    return None


def kafka_error(exc: BaseException, what: str) -> MulambdaError:
    """``exc`` (from aiokafka) as a MulambdaError: an access error, else KafkaUnavailable."""
    return access_error(exc, what) or KafkaUnavailable(f"{what}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def start_bounded(client: Any, what: str, timeout_s: float) -> None:
    """Start an aiokafka client, failing within ``timeout_s`` with a one-line reason:
    AuthenticationError / AuthorizationError when the cluster refuses, else
    KafkaUnavailable. Producers get coordinator failover (mulambda.kafka.coordinators)."""
    pause_failed_metadata_refreshes(client)
    forget_unreachable_coordinators(client)
    try:
        async with asyncio.timeout(timeout_s):
            await client.start()
    except (TimeoutError, KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await client.close() if hasattr(client, "close") else await client.stop()
        denied = access_error(exc, what)
        if denied is not None:
            raise denied from exc
        raise KafkaUnavailable(
            f"{what}: Kafka unreachable within {timeout_s:g}s ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True, slots=True)
class Membership:
    """How a group consumer takes part in its group.

    ``instance_id`` turns on static membership (KIP-345): a member that restarts with
    the same id within ``session_timeout_s`` gets its partitions back without a
    rebalance, and a member that died is replaced once its session times out. A short
    session makes failover fast; brokers refuse sessions below their
    ``group.min.session.timeout.ms`` (6 s by default; the local broker allows 1 s).
    """

    instance_id: str | None = None
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 3.0

    def consumer_kwargs(self) -> dict[str, Any]:
        """The aiokafka consumer arguments for this membership."""
        kwargs: dict[str, Any] = {
            "session_timeout_ms": int(self.session_timeout_s * 1000),
            "heartbeat_interval_ms": int(self.heartbeat_interval_s * 1000),
        }
        if self.instance_id is not None:
            kwargs["group_instance_id"] = self.instance_id
        return kwargs


async def start_consumer(
    config: KafkaConfig,
    what: str,
    *,
    group_id: str | None = None,
    membership: Membership | None = None,
    auto_offset_reset: str = "latest",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    fetch_max_wait_ms: int = 100,
    read_committed: bool = False,
) -> KafkaConsumer:
    """A started consumer; KafkaUnavailable (naming ``what``) within the config's timeout.

    Offsets are never auto-committed: group consumers commit what they finished. A
    partition fetch holds at least one record of ``max_record_bytes``. Assigning or
    subscribing is the caller's: the consumer reads nothing until then.
    """
    consumer = AIOKafkaConsumer(
        **config.client_kwargs(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        max_partition_fetch_bytes=max_record_bytes + FRAMING_HEADROOM_BYTES,
        fetch_max_wait_ms=fetch_max_wait_ms,
        # read_committed: records of open or aborted transactions are never returned.
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        **(membership.consumer_kwargs() if membership is not None and group_id else {}),
    )
    await start_bounded(consumer, what, config.request_timeout_s)
    return consumer


async def close_consumer(consumer: KafkaConsumer) -> None:
    """Close ``consumer``, ignoring a connection that already broke."""
    # aiokafka awaits a helper task on close that raises CancelledError if it never ran;
    # one turn of the loop lets it start (it has not when start fails without awaiting).
    await asyncio.sleep(0)
    with contextlib.suppress(KafkaError, OSError):
        await consumer.stop()
