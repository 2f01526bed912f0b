"""KafkaTopics and KafkaUsers generated from the catalog (mulambda/deploy/strimzi.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mulambda.cli import cli
from mulambda.deploy import strimzi
from mulambda.security.acls import ROLES, role_acls
from mulambda.wire.catalog import Topic, load_catalog

pytestmark = pytest.mark.unit


def test_a_topic_per_catalog_entry_with_its_settings() -> None:
    catalog = load_catalog("staging.")
    topics = {t["metadata"]["name"]: t for t in strimzi.kafka_topics(catalog, cluster="c1")}
    assert len(topics) == len(catalog.specs)
    spec = catalog.spec(Topic.EXECUTOR_REGISTRATIONS)
    topic = topics[f"staging.{spec.name}"]
    assert topic["apiVersion"] == "kafka.strimzi.io/v1"
    assert topic["metadata"]["labels"] == {"strimzi.io/cluster": "c1"}
    assert topic["spec"] == {
        "topicName": f"staging.{spec.name}",
        "partitions": spec.partitions,
        "replicas": spec.replication,
        "config": dict(spec.config),
    }


def test_a_scram_user_per_role_with_exactly_its_acls() -> None:
    catalog = load_catalog()
    users = {u["metadata"]["name"]: u for u in strimzi.kafka_users(catalog)}
    assert set(users) == {f"mulambda-{role}" for role in ROLES}
    for role in ROLES:
        spec = users[strimzi.user_name(role)]["spec"]
        assert spec["authentication"] == {"type": "scram-sha-512"}
        acls = spec["authorization"]["acls"]
        rules = role_acls(role, catalog)
        assert len(acls) == len(rules)
        for acl, rule in zip(acls, rules, strict=True):
            assert acl["type"] == "allow"
            assert acl["operations"] == list(rule.operations)
            resource = acl["resource"]
            if rule.resource_type == "cluster":
                assert resource == {"type": "cluster"}
                continue
            assert resource["name"] == rule.name
            assert resource["type"] == {
                "topic": "topic", "group": "group", "transactional_id": "transactionalId",
            }[rule.resource_type]  # fmt: skip
            assert (
                resource["patternType"]
                == {"literal": "literal", "prefixed": "prefix"}[rule.pattern]
            )
    # The routers' transactional ids and group are prefixes; their writes need the cluster.
    router = users["mulambda-router"]["spec"]["authorization"]["acls"]
    kinds = {(a["resource"]["type"], a["resource"].get("patternType")) for a in router}
    assert {("transactionalId", "prefix"), ("group", "prefix"), ("cluster", None)} <= kinds


def test_generate_check_fails_on_drift_and_generate_repairs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = tmp_path
    monkeypatch.setattr(strimzi, "kubernetes_base_dir", lambda: base)
    runner = CliRunner()
    stale = runner.invoke(cli, ["deploy", "generate", "--check"])
    assert stale.exit_code == 1
    assert "kafka-topics.yaml" in stale.output
    assert "kafka-users.yaml" in stale.output
    assert not list(base.iterdir())  # --check writes nothing
    wrote = runner.invoke(cli, ["deploy", "generate"])
    assert wrote.exit_code == 0, wrote.output
    assert runner.invoke(cli, ["deploy", "generate", "--check"]).exit_code == 0
    (base / strimzi.USERS_FILE).write_text("edited by hand\n")
    again = runner.invoke(cli, ["deploy", "generate", "--check"])
    assert again.exit_code == 1
    assert "kafka-users.yaml" in again.output


def test_generate_outside_a_checkout_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strimzi, "kubernetes_base_dir", lambda: None)
    result = CliRunner().invoke(cli, ["deploy", "generate"])
    assert result.exit_code == 1
    assert "source checkout" in result.output
