"""The Kafka ACLs each MuLambda role needs, from the catalog's ``access`` table.

One source of truth: ``catalog.yaml`` says which roles read and write each topic;
:func:`role_acls` adds what the clients need besides (consumer groups, transactional ids,
idempotent producing, topic administration) and returns broker-neutral
:class:`AclRule` values. The local secured broker applies them through the Admin API,
the Kubernetes manifests turn them into Strimzi ``KafkaUser`` resources.

What the workers do on the wire, and so what the rules grant:

* readers of a topic get ``Read`` and ``Describe`` on it (fetches, offsets, metadata);
* writers get ``Write`` and ``Describe``; every producing role also gets ``IdempotentWrite``
  on the cluster (MuLambda's producers are idempotent; brokers before 2.8 require it);
* the selectors share the consumer group ``selector_group`` (``selector_group_id``
  setting), the routers ``router_group`` (``mulambda router --group-id``): ``Read`` and
  ``Describe`` on groups with that prefix, so deployments and tests can suffix them. The
  other readers (companions, requesters, listings) assign partitions without a group;
* routers in exactly-once mode use the transactional id ``<group>.<router id>``:
  ``Write`` and ``Describe`` on transactional ids with the group's prefix;
* results go to the catalog's inference-results topic, or to ``reply_topics`` (the
  router's ``router_reply_topics`` entries: names, or prefixes ending in ``*``) which
  routers may write and producer applications may read;
* the administrator creates and configures the catalog's topics (``mulambda topics
  apply``), reads every topic and inspects the worker groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from mulambda.errors import ConfigurationError
from mulambda.wire.catalog import ROLES, Catalog

__all__ = ["DEFAULT_ROUTER_GROUP", "DEFAULT_SELECTOR_GROUP", "ROLES", "AclRule", "role_acls"]

DEFAULT_ROUTER_GROUP: Final = "mulambda-router"
"""Consumer group (and transactional id prefix) routers use unless told otherwise."""

DEFAULT_SELECTOR_GROUP: Final = "mulambda-selector"
"""Consumer group selectors use unless told otherwise."""

ResourceType = Literal["topic", "group", "transactional_id", "cluster"]
PatternType = Literal["literal", "prefixed"]

CLUSTER_NAME: Final = "kafka-cluster"
"""The name Kafka gives the one cluster resource."""

READ_OPS: Final = ("Read", "Describe")
WRITE_OPS: Final = ("Write", "Describe")
ADMIN_TOPIC_OPS: Final = ("Create", "Alter", "AlterConfigs", "DescribeConfigs")


@dataclass(frozen=True, slots=True)
class AclRule:
    """Allow the role's principal ``operations`` on the resources matching ``name``."""

    resource_type: ResourceType
    name: str
    pattern: PatternType
    operations: tuple[str, ...]


def role_acls(
    role: str,
    catalog: Catalog,
    topic_prefix: str | None = None,
    *,
    router_group: str = DEFAULT_ROUTER_GROUP,
    selector_group: str = DEFAULT_SELECTOR_GROUP,
    reply_topics: Iterable[str] = (),
) -> list[AclRule]:
    """The ACLs of ``role`` (one of :data:`ROLES`) for the catalog's topics named with
    ``topic_prefix`` (None: the catalog's own prefix). Rules on one resource are merged
    into one, in a stable order; ConfigurationError for an unknown role."""
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    prefix = catalog.prefix if topic_prefix is None else topic_prefix
    ops: dict[tuple[ResourceType, str, PatternType], list[str]] = {}

    def grant(kind: ResourceType, name: str, pattern: PatternType, *grant_ops: str) -> None:
        held = ops.setdefault((kind, name, pattern), [])
        held.extend(op for op in grant_ops if op not in held)

    writes = False
    for spec in catalog.specs.values():
        name = spec.full_name(prefix)
        if role in spec.access.read:
            grant("topic", name, "literal", *READ_OPS)
        if role in spec.access.write:
            grant("topic", name, "literal", *WRITE_OPS)
            writes = True
        if role == "administrator":
            grant("topic", name, "literal", *ADMIN_TOPIC_OPS)
    replies = _reply_resources(reply_topics)
    if role == "router":
        for name, pattern in replies:
            grant("topic", name, pattern, *WRITE_OPS)
        grant("group", router_group, "prefixed", *READ_OPS)
        grant("transactional_id", router_group, "prefixed", *WRITE_OPS)
    if role == "producer":
        for name, pattern in replies:
            grant("topic", name, pattern, *READ_OPS)
    if role == "selector":
        grant("group", selector_group, "prefixed", *READ_OPS)
    if role == "administrator":
        for group in (router_group, selector_group):
            grant("group", group, "prefixed", "Describe", "Read")
        grant("cluster", CLUSTER_NAME, "literal", "Describe", "DescribeConfigs")
    if writes:
        grant("cluster", CLUSTER_NAME, "literal", "IdempotentWrite")
    return [
        AclRule(kind, name, pattern, tuple(held)) for (kind, name, pattern), held in ops.items()
    ]


def _reply_resources(entries: Iterable[str]) -> list[tuple[str, PatternType]]:
    out: list[tuple[str, PatternType]] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        if entry.endswith("*"):
            if not entry[:-1] or "*" in entry[:-1]:
                raise ConfigurationError(
                    f"reply topic entries are names or prefixes ending in '*', not {entry!r}"
                )
            out.append((entry[:-1], "prefixed"))
        elif "*" in entry:
            raise ConfigurationError(
                f"reply topic entries are names or prefixes ending in '*', not {entry!r}"
            )
        else:
            out.append((entry, "literal"))
    return out
