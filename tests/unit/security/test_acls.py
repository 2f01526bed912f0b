"""Kafka ACLs per role, from the catalog's access table."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import mulambda.cli.router
from mulambda.errors import ConfigurationError
from mulambda.routing.router import Router
from mulambda.runtime.settings import Settings
from mulambda.security import ROLES, AclRule, role_acls
from mulambda.security.acls import DEFAULT_ROUTER_GROUP, DEFAULT_SELECTOR_GROUP
from mulambda.wire.catalog import CATALOG_FILE, Catalog, Topic, catalog_source, load_catalog

pytestmark = pytest.mark.unit


def topic_ops(rules: list[AclRule], catalog: Catalog, topic: Topic) -> set[str]:
    name = catalog.name(topic)
    return {
        op
        for rule in rules
        if rule.resource_type == "topic" and rule.pattern == "literal" and rule.name == name
        for op in rule.operations
    }


def readable(rules: list[AclRule], catalog: Catalog) -> set[Topic]:
    return {t for t in Topic if "Read" in topic_ops(rules, catalog, t)}


def writable(rules: list[AclRule], catalog: Catalog) -> set[Topic]:
    return {t for t in Topic if "Write" in topic_ops(rules, catalog, t)}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog("p.")


def test_producer_applications_write_requests_and_read_results_only(catalog: Catalog) -> None:
    rules = role_acls("producer", catalog)
    assert writable(rules, catalog) == {Topic.INFERENCE_REQUESTS, Topic.CLIENT_REGISTRATIONS}
    assert readable(rules, catalog) == {Topic.INFERENCE_RESULTS, Topic.CLIENT_REGISTRATIONS}
    assert not any(r.resource_type in ("group", "transactional_id") for r in rules)


def test_companions_write_status_latency_and_registrations(catalog: Catalog) -> None:
    rules = role_acls("companion", catalog)
    assert writable(rules, catalog) == {
        Topic.EXECUTOR_REGISTRATIONS,
        Topic.EXECUTOR_STATUS,
        Topic.LATENCY_MEASUREMENTS,
        Topic.DEAD_LETTERS,
    }
    assert readable(rules, catalog) == {Topic.EXECUTOR_REGISTRATIONS, Topic.CLIENT_REGISTRATIONS}


def test_routers_read_requests_write_results_and_hold_their_group_and_transactions(
    catalog: Catalog,
) -> None:
    rules = role_acls("router", catalog)
    assert readable(rules, catalog) == {
        Topic.INFERENCE_REQUESTS,
        Topic.SELECTION_REPLIES,
        # What ends selection leases early (mulambda.routing.executor_changes).
        Topic.EXECUTOR_REGISTRATIONS,
        Topic.EXECUTOR_STATUS,
    }
    assert writable(rules, catalog) == {
        Topic.INFERENCE_RESULTS,
        Topic.SELECTION_REQUESTS,
        Topic.OBSERVED_LATENCIES,
        Topic.DEAD_LETTERS,
    }
    assert AclRule("group", DEFAULT_ROUTER_GROUP, "prefixed", ("Read", "Describe")) in rules
    # The exactly-once transactional id is "<group>.<router id>" (mulambda.routing.router).
    assert (
        AclRule("transactional_id", DEFAULT_ROUTER_GROUP, "prefixed", ("Write", "Describe"))
        in rules
    )
    assert AclRule("cluster", "kafka-cluster", "literal", ("IdempotentWrite",)) in rules


def test_selectors_read_the_state_topics_and_answer_selections(catalog: Catalog) -> None:
    rules = role_acls("selector", catalog)
    assert readable(rules, catalog) == {
        Topic.EXECUTOR_REGISTRATIONS,
        Topic.CLIENT_REGISTRATIONS,
        Topic.EXECUTOR_STATUS,
        Topic.LATENCY_MEASUREMENTS,
        Topic.OBSERVED_LATENCIES,
        Topic.SELECTION_REQUESTS,
    }
    assert writable(rules, catalog) == {Topic.SELECTION_REPLIES, Topic.DEAD_LETTERS}
    assert AclRule("group", DEFAULT_SELECTOR_GROUP, "prefixed", ("Read", "Describe")) in rules


def test_the_launcher_only_watches_and_never_produces(catalog: Catalog) -> None:
    rules = role_acls("launcher", catalog)
    assert writable(rules, catalog) == set()
    assert readable(rules, catalog) == {Topic.EXECUTOR_REGISTRATIONS, Topic.EXECUTOR_STATUS}
    assert not any(r.resource_type == "cluster" for r in rules)


def test_the_administrator_manages_and_reads_every_topic(catalog: Catalog) -> None:
    rules = role_acls("administrator", catalog)
    assert readable(rules, catalog) == set(Topic)
    for topic in Topic:
        assert {"Create", "Alter", "AlterConfigs", "DescribeConfigs"} <= topic_ops(
            rules, catalog, topic
        )
    # Deregistering (tombstones) from the CLI, but never forging worker traffic.
    assert writable(rules, catalog) == {Topic.EXECUTOR_REGISTRATIONS, Topic.CLIENT_REGISTRATIONS}


def test_only_companions_and_the_administrator_may_register_executors(catalog: Catalog) -> None:
    may = {
        r for r in ROLES if Topic.EXECUTOR_REGISTRATIONS in writable(role_acls(r, catalog), catalog)
    }
    assert may == {"companion", "administrator"}


def test_every_topic_has_a_reader_and_a_writer(catalog: Catalog) -> None:
    for topic in Topic:
        access = catalog.spec(topic).access
        assert access.read, topic
        assert access.write, topic


def test_the_topic_prefix_names_the_resources(catalog: Catalog) -> None:
    assert {r.name for r in role_acls("producer", catalog) if r.resource_type == "topic"} == {
        "p.mulambda.inference-requests",
        "p.mulambda.inference-results",
        "p.mulambda.client-registrations",
    }
    other = {r.name for r in role_acls("producer", catalog, "q.") if r.resource_type == "topic"}
    assert other == {
        n.replace("p.", "q.", 1)
        for n in {
            "p.mulambda.inference-requests",
            "p.mulambda.inference-results",
            "p.mulambda.client-registrations",
        }
    }


def test_reply_topics_are_written_by_routers_and_read_by_producers(catalog: Catalog) -> None:
    entries = ["app.replies", "tenant-*", " "]
    router = role_acls("router", catalog, reply_topics=entries)
    producer = role_acls("producer", catalog, reply_topics=entries)
    assert AclRule("topic", "app.replies", "literal", ("Write", "Describe")) in router
    assert AclRule("topic", "tenant-", "prefixed", ("Write", "Describe")) in router
    assert AclRule("topic", "tenant-", "prefixed", ("Read", "Describe")) in producer
    for bad in ("*", "a*b", "ten*ant-*"):
        with pytest.raises(ConfigurationError, match="names or prefixes"):
            role_acls("router", catalog, reply_topics=[bad])


def test_groups_follow_the_given_names(catalog: Catalog) -> None:
    rules = role_acls("router", catalog, router_group="team-a-router")
    assert {r.name for r in rules if r.resource_type in ("group", "transactional_id")} == {
        "team-a-router"
    }


def test_default_groups_are_the_ones_the_workers_use() -> None:
    assert Settings().selector_group_id == DEFAULT_SELECTOR_GROUP
    assert inspect.signature(Router).parameters["group_id"].default == DEFAULT_ROUTER_GROUP
    option = next(p for p in mulambda.cli.router.router.params if p.name == "group_id")
    assert option.default == DEFAULT_ROUTER_GROUP


def test_rules_on_one_resource_are_merged(catalog: Catalog) -> None:
    for role in ROLES:
        rules = role_acls(role, catalog)
        keys = [(r.resource_type, r.name, r.pattern) for r in rules]
        assert len(keys) == len(set(keys)), role
        assert all(len(set(r.operations)) == len(r.operations) for r in rules)


def test_an_unknown_role_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError, match="unknown role 'root'"):
        role_acls("root", catalog)


@pytest.mark.parametrize(
    ("access", "message"),
    [
        ("{read: [selector], write: [hacker]}", r"unknown roles \['hacker'\]"),
        ("{read: selector, write: []}", "must be a list"),
        ("{read: [], write: [], delete: []}", "read and write lists"),
    ],
)
def test_the_catalog_refuses_bad_access_entries(tmp_path: Path, access: str, message: str) -> None:
    source = catalog_source()
    marker = "      read: [administrator]\n      write: [selector, router, companion]\n"
    assert marker in source  # the dead-letters entry, replaced below
    bad = source.replace("    access:\n" + marker, f"    access: {access}\n")
    (tmp_path / CATALOG_FILE).write_text(bad)
    with pytest.raises(ConfigurationError, match=message):
        load_catalog(path=tmp_path / CATALOG_FILE)


def test_the_catalog_requires_access_on_every_topic(tmp_path: Path) -> None:
    source = catalog_source().replace(
        "    access:\n      read: [administrator]\n      write: [selector, router, companion]\n",
        "",
    )
    (tmp_path / CATALOG_FILE).write_text(source)
    with pytest.raises(ConfigurationError, match=r"bad entry 'dead-letters'.*access"):
        load_catalog(path=tmp_path / CATALOG_FILE)
