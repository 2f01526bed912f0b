"""Refusals by the cluster (credentials, ACLs) become AuthenticationError and
AuthorizationError at the Kafka boundary; refused readers wait, report and recover."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, ClassVar

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

import mulambda.kafka.fetching
from mulambda.errors import AuthenticationError, AuthorizationError, KafkaUnavailable
from mulambda.kafka import KafkaConfig, TopicPartition, consumer_problem, fetch, fetch_retrying
from mulambda.kafka.acls import OPERATIONS, acl_creations
from mulambda.kafka.config import SASL_API_VERSION, kafka_error
from mulambda.security import AclRule

pytestmark = pytest.mark.unit

TP = TopicPartition("t", 0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TopicAuthorizationFailedError("t"), AuthorizationError),
        (GroupAuthorizationFailedError("g"), AuthorizationError),
        (TransactionalIdAuthorizationFailed("x"), AuthorizationError),
        (SaslAuthenticationFailed("bad password"), AuthenticationError),
        (ssl.SSLCertVerificationError("self-signed"), AuthenticationError),
        (KafkaConnectionError("gone"), KafkaUnavailable),
    ],
)
def test_library_errors_are_translated(error: BaseException, kind: type[Exception]) -> None:
    translated = kafka_error(error, "producing")
    assert type(translated) is kind
    assert translated.reason.startswith("producing: ")
    assert translated.retriable is (kind is KafkaUnavailable)


def test_sasl_clients_know_the_api_version_and_keep_the_password_out_of_repr() -> None:
    config = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="router",
        sasl_password="s3cret-value",  # noqa: S106 - a test credential, no server involved
    )
    # Without a known version aiokafka's bootstrap connection reports a refused password
    # as a closed connection (see KafkaConfig.client_kwargs).
    assert config.client_kwargs()["api_version"] == SASL_API_VERSION
    assert "s3cret-value" not in repr(config)
    assert "api_version" not in KafkaConfig().client_kwargs()


class RefusingConsumer:
    """A consumer whose first ``refusals`` fetches the cluster refuses."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.fetches = 0
        self.assigned = {TP}

    async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: Any = None) -> Any:
        self.fetches += 1
        if self.fetches <= self.refusals:
            raise GroupAuthorizationFailedError("other-group")
        return {TP: ["r"]}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return 0


async def test_a_refused_reader_waits_reports_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mulambda.kafka.fetching, "ACCESS_DENIED_BACKOFF_S", 0.2)
    consumer = RefusingConsumer(refusals=2)
    seen: list[str | None] = []

    async def watch() -> None:
        while True:
            seen.append(consumer_problem(consumer, "request consumer"))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    began = asyncio.get_running_loop().time()
    got = await fetch_retrying(consumer, timeout_ms=10, retry_backoff_s=0.0)
    waited = asyncio.get_running_loop().time() - began
    watcher.cancel()
    assert got == {TP: ["r"]}
    assert consumer.fetches == 3
    # Two refusals, each followed by the access back-off (not retry_backoff_s = 0).
    assert waited >= 0.4
    reasons = [r for r in seen if r]
    assert reasons
    assert all("not authorised by the cluster's ACLs" in r for r in reasons)
    assert all(r.startswith("request consumer: ") for r in reasons)
    assert consumer_problem(consumer, "request consumer") is None


class StarvedConsumer(RefusingConsumer):
    """aiokafka's behaviour for a topic it may not describe: nothing, for ever."""

    class _Cluster:
        unauthorized_topics: ClassVar[set[str]] = {"t"}

    class _Client:
        cluster = None

    def __init__(self) -> None:
        super().__init__(refusals=0)
        self._client = self._Client()
        self._client.cluster = self._Cluster()  # type: ignore[assignment]

    async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: Any = None) -> Any:
        return {}

    def subscription(self) -> set[str]:
        return set()


async def test_a_topic_the_reader_may_not_describe_is_an_authorization_error() -> None:
    with pytest.raises(AuthorizationError, match="to describe t"):
        await fetch(StarvedConsumer(), timeout_ms=10, what="state fetch")


def test_acl_entries_use_the_protocol_codes() -> None:
    rules = [
        AclRule("topic", "p.mulambda.inference-requests", "literal", ("Read", "Describe")),
        AclRule("group", "mulambda-router", "prefixed", ("Read",)),
        AclRule("transactional_id", "mulambda-router", "prefixed", ("Write",)),
        AclRule("cluster", "kafka-cluster", "literal", ("IdempotentWrite",)),
    ]
    entries = acl_creations("User:router", rules)
    # (resource type, name, pattern type, principal, host, operation, permission ALLOW=3)
    assert entries == [
        (2, "p.mulambda.inference-requests", 3, "User:router", "*", 3, 3),
        (2, "p.mulambda.inference-requests", 3, "User:router", "*", 8, 3),
        (3, "mulambda-router", 4, "User:router", "*", 3, 3),
        (5, "mulambda-router", 4, "User:router", "*", 4, 3),
        (4, "kafka-cluster", 3, "User:router", "*", 12, 3),
    ]
    assert set(OPERATIONS) >= {"Create", "Alter", "AlterConfigs", "DescribeConfigs"}
