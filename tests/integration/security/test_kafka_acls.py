"""The authorisation matrix on a secured broker: every role's principal tries every
topic operation and consumer group; what the catalog's access table allows succeeds,
everything else fails with AuthorizationError. Bad credentials fail with
AuthenticationError, and the CLI exits non-zero with the reason."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mulambda.errors import AuthenticationError, AuthorizationError
from mulambda.harness.infra import PrivateInfra
from mulambda.kafka import (
    Admin,
    Producer,
    TopicPartition,
    await_delivery,
    close_consumer,
    fetch,
    start_consumer,
)
from mulambda.kafka.acls import apply_acls
from mulambda.security import ROLES, role_acls
from mulambda.security.acls import DEFAULT_ROUTER_GROUP, DEFAULT_SELECTOR_GROUP
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from tests.integration.security.conftest import BROKER_USER, cli_env, mulambda

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "not-the-password"  # noqa: S105 - a deliberately wrong one

GROUPS = {
    "router group": f"{DEFAULT_ROUTER_GROUP}-matrix",
    "selector group": f"{DEFAULT_SELECTOR_GROUP}-matrix",
    "other group": "someone-elses-group",
}


@dataclass(frozen=True)
class Trial:
    role: str
    resource: str
    operation: str
    expected: bool
    allowed: bool
    error: str = ""


def allowed_by_table(catalog: Catalog, role: str, topic: Topic, operation: str) -> bool:
    access = catalog.spec(topic).access
    return role in (access.write if operation == "produce" else access.read)


async def produce_trials(secured: PrivateInfra, catalog: Catalog, role: str) -> list[Trial]:
    trials = []
    producer = Producer(secured.kafka_as(role), delivery_timeout_s=5.0)
    try:
        await producer.start()
    except AuthorizationError as exc:
        # Idempotent producers need a producer id (IdempotentWrite, or Write on some
        # topic): a role that writes nowhere cannot even start one.
        return [
            Trial(
                role,
                t.value,
                "produce",
                allowed_by_table(catalog, role, t, "produce"),
                False,
                exc.reason,
            )
            for t in Topic
        ]
    try:
        # Denied topics first: a refusal must not spoil the producer for allowed ones.
        order = sorted(Topic, key=lambda t: allowed_by_table(catalog, role, t, "produce"))
        for topic in order:
            expected = allowed_by_table(catalog, role, topic, "produce")
            try:
                delivery = await producer.send_raw(catalog.name(topic), b"{}", key="matrix")
                await await_delivery(delivery, f"{role} producing")
            except AuthorizationError as exc:
                trials.append(Trial(role, topic.value, "produce", expected, False, exc.reason))
            else:
                trials.append(Trial(role, topic.value, "produce", expected, True))
    finally:
        await producer.stop()
    return trials


async def consume_trials(secured: PrivateInfra, catalog: Catalog, role: str) -> list[Trial]:
    trials = []
    for topic in Topic:
        expected = allowed_by_table(catalog, role, topic, "consume")
        # A fresh group-less reader per topic, as the workers' readers are.
        consumer = await start_consumer(secured.kafka_as(role), f"{role} reader")
        try:
            tp = TopicPartition(catalog.name(topic), 0)
            consumer.assign([tp])
            # Until the broker answered a fetch of the partition (or refused one): an
            # empty getmany alone may return before any fetch was even sent.
            for _ in range(40):
                await fetch(consumer, timeout_ms=250)
                if consumer.last_poll_timestamp(tp):
                    break
        except AuthorizationError as exc:
            trials.append(Trial(role, topic.value, "consume", expected, False, exc.reason))
        else:
            fetched = bool(consumer.last_poll_timestamp(tp))
            trials.append(Trial(role, topic.value, "consume", expected, fetched, "no answer"))
        finally:
            await close_consumer(consumer)
    return trials


async def group_trials(secured: PrivateInfra, catalog: Catalog, role: str) -> list[Trial]:
    readable = [t for t in Topic if allowed_by_table(catalog, role, t, "consume")]
    rules = role_acls(role, catalog)
    trials = []
    for label, group in GROUPS.items():
        expected = any(
            r.resource_type == "group" and "Read" in r.operations and group.startswith(r.name)
            for r in rules
        )
        if not readable:  # joining needs a topic to read; a role reading none has no group
            trials.append(Trial(role, label, "join", expected, False, "reads no topic"))
            continue
        consumer = await start_consumer(secured.kafka_as(role), f"{role} member", group_id=group)
        try:
            consumer.subscribe([catalog.name(readable[0])])
            # Joining takes a few fetches (coordinator, join, sync); a refusal comes at once.
            for _ in range(15):
                await fetch(consumer, timeout_ms=300)
                if consumer.assignment():
                    break
        except AuthorizationError as exc:
            trials.append(Trial(role, label, "join", expected, False, exc.reason))
        else:
            trials.append(Trial(role, label, "join", expected, bool(consumer.assignment())))
        finally:
            await close_consumer(consumer)
    return trials


def matrix_table(trials: list[Trial]) -> str:
    columns = list(dict.fromkeys(f"{t.operation} {t.resource}" for t in trials))
    cell = {(t.role, f"{t.operation} {t.resource}"): t for t in trials}
    lines = ["| | " + " | ".join(ROLES) + " |", "|---" * (len(ROLES) + 1) + "|"]
    for column in columns:
        marks = []
        for role in ROLES:
            trial = cell.get((role, column))
            marks.append("-" if trial is None else ("allowed" if trial.allowed else "denied"))
        lines.append(f"| {column} | " + " | ".join(marks) + " |")
    return "\n".join(lines)


async def test_every_role_can_do_exactly_what_the_access_table_allows(
    secured: PrivateInfra, secured_catalog: Catalog
) -> None:
    trials: list[Trial] = []
    for role in ROLES:
        trials += await produce_trials(secured, secured_catalog, role)
        trials += await consume_trials(secured, secured_catalog, role)
        trials += await group_trials(secured, secured_catalog, role)
    print("\nauthorisation matrix (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer):")
    print(matrix_table(trials))
    wrong = [t for t in trials if t.allowed != t.expected]
    assert wrong == []
    denied = [t for t in trials if not t.allowed and t.error != "reads no topic"]
    assert denied, "the matrix must contain refusals"
    for trial in denied:
        assert "not authorised by the cluster's ACLs" in trial.error, trial
    # The examples, read off the matrix.
    outcome = {(t.role, t.operation, t.resource): t.allowed for t in trials}
    assert outcome["producer", "produce", "inference-requests"]
    assert outcome["producer", "consume", "inference-results"]
    assert not outcome["producer", "produce", "executor-registrations"]
    assert outcome["companion", "produce", "executor-registrations"]
    assert outcome["companion", "produce", "executor-status"]
    assert outcome["companion", "produce", "latency-measurements"]
    assert outcome["router", "consume", "inference-requests"]
    assert outcome["router", "produce", "inference-results"]
    assert outcome["router", "join", "router group"]
    assert not outcome["router", "join", "other group"]


async def test_a_wrong_password_is_an_authentication_error(secured: PrivateInfra) -> None:
    with pytest.raises(AuthenticationError, match="Kafka refused the credentials") as caught:
        async with Producer(secured.kafka_as("producer", password=WRONG_PASSWORD)):
            pass
    assert not caught.value.retriable
    assert WRONG_PASSWORD not in str(caught.value)


async def test_only_a_super_user_may_grant_acls(
    secured: PrivateInfra, secured_catalog: Catalog
) -> None:
    rules = role_acls("producer", secured_catalog)
    with pytest.raises(AuthorizationError):
        await apply_acls(secured.kafka_as("administrator"), {"User:intruder": rules})
    granted = await apply_acls(secured.kafka_as(BROKER_USER), {"User:producer": rules})
    assert granted == {"User:producer": sum(len(r.operations) for r in rules)}


def test_the_cli_exits_with_the_reason_on_bad_credentials(secured: PrivateInfra) -> None:
    done = mulambda(cli_env(secured, "administrator", WRONG_PASSWORD), "topics", "list")
    assert done.returncode == 1, done
    assert "Kafka refused the credentials" in done.stderr
    assert "SaslAuthenticationFailed" in done.stderr
    assert WRONG_PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_producer_application_cannot_register_an_executor(
    secured: PrivateInfra, secured_catalog: Catalog
) -> None:
    register = [
        "executors", "register", "--executor-id", "ex-forged", "--endpoint",
        "http://10.0.0.66:8501", "--model-name", "wine", "--model-type", "classification",
        "--input-format", "wine-13", "--output-format", "probs-3", "--accuracy", "0.99",
    ]  # fmt: skip
    forged = mulambda(cli_env(secured, "producer"), *register)
    assert forged.returncode == 1, forged
    assert "not authorised by the cluster's ACLs" in forged.stderr
    assert "Traceback" not in forged.stderr
    genuine = mulambda(cli_env(secured, "companion"), *register)
    assert genuine.returncode == 0, genuine.stderr
    listed = mulambda(cli_env(secured, "launcher"), "executors", "list")
    assert listed.returncode == 0, listed.stderr
    assert "ex-forged" in listed.stdout
    removed = mulambda(cli_env(secured, "administrator"), "executors", "deregister", "ex-forged")
    assert removed.returncode == 0, removed.stderr


async def test_only_the_administrator_creates_topics(secured: PrivateInfra) -> None:
    intruding = load_catalog("intruder.")
    for role in ("producer", "router", "companion"):
        async with Admin(secured.kafka_as(role)) as admin:
            with pytest.raises(AuthorizationError, match=r"create intruder\.mulambda"):
                await admin.apply(intruding)
