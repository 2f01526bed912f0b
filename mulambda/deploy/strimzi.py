"""Strimzi resources generated from the topic catalog: one ``KafkaTopic`` per catalog entry
and one ``KafkaUser`` per role (SCRAM-SHA-512, with the ACLs of
:func:`mulambda.security.acls.role_acls`).

Pure: catalog in, plain dicts out. ``mulambda deploy generate`` writes them to
``deploy/k8s/base/`` and ``--check`` fails when the committed files drifted from the
catalog, the way ``mulambda topics generate --check`` does for the schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from mulambda.security.acls import ROLES, AclRule, role_acls
from mulambda.wire.catalog import Catalog, CatalogCopy

STRIMZI_API: Final = "kafka.strimzi.io/v1"
"""Strimzi's custom resource API (Strimzi 1.x)."""

KAFKA_CLUSTER: Final = "mulambda"
"""Name of the ``Kafka`` resource in deploy/k8s; its bootstrap Service is
``mulambda-kafka-bootstrap``."""

CLUSTER_CA_SECRET: Final = f"{KAFKA_CLUSTER}-cluster-ca-cert"
"""The Secret in which Strimzi publishes the brokers' CA (key ``ca.crt``)."""

CLUSTER_LABEL: Final = "strimzi.io/cluster"
"""Label by which Strimzi's operators tie a topic or user to its ``Kafka``."""

TOPICS_FILE: Final = "kafka-topics.yaml"
USERS_FILE: Final = "kafka-users.yaml"

USER_PREFIX: Final = "mulambda-"
"""A role's KafkaUser (and so its SCRAM user name, and the Secret Strimzi puts its password
in) is ``mulambda-<role>``."""

_RESOURCE_TYPES: Final = {
    "topic": "topic",
    "group": "group",
    "transactional_id": "transactionalId",
    "cluster": "cluster",
}
_PATTERN_TYPES: Final = {"literal": "literal", "prefixed": "prefix"}

HEADER: Final = (
    "# Generated from mulambda/wire/topics/catalog.yaml by `mulambda deploy generate`;"
    " do not edit.\n"
)


def kafka_topics(catalog: Catalog, cluster: str = KAFKA_CLUSTER) -> list[dict[str, Any]]:
    """A ``KafkaTopic`` per catalog entry, named as the topic (the catalog's names are valid
    resource names) with the catalog's partitions, replication and configs."""
    topics = []
    for spec in catalog.specs.values():
        name = spec.full_name(catalog.prefix)
        topics.append(
            {
                "apiVersion": STRIMZI_API,
                "kind": "KafkaTopic",
                "metadata": {"name": name, "labels": {CLUSTER_LABEL: cluster}},
                "spec": {
                    "topicName": name,
                    "partitions": spec.partitions,
                    "replicas": spec.replication,
                    "config": dict(spec.config),
                },
            }
        )
    return topics


def user_name(role: str) -> str:
    """The KafkaUser (SCRAM user, Secret) of ``role``."""
    return f"{USER_PREFIX}{role}"


def _acl(rule: AclRule) -> dict[str, Any]:
    resource: dict[str, Any] = {"type": _RESOURCE_TYPES[rule.resource_type]}
    # Kafka has one cluster resource; Strimzi names it implicitly.
    if rule.resource_type != "cluster":
        resource["name"] = rule.name
        resource["patternType"] = _PATTERN_TYPES[rule.pattern]
    return {"type": "allow", "resource": resource, "operations": list(rule.operations)}


def kafka_users(catalog: Catalog, cluster: str = KAFKA_CLUSTER) -> list[dict[str, Any]]:
    """A SCRAM-SHA-512 ``KafkaUser`` per role with exactly the role's ACLs. Strimzi's User
    Operator generates each password into a Secret named as the user (key ``password``)."""
    return [
        {
            "apiVersion": STRIMZI_API,
            "kind": "KafkaUser",
            "metadata": {"name": user_name(role), "labels": {CLUSTER_LABEL: cluster}},
            "spec": {
                "authentication": {"type": "scram-sha-512"},
                "authorization": {
                    "type": "simple",
                    "acls": [_acl(rule) for rule in role_acls(role, catalog)],
                },
            },
        }
        for role in ROLES
    ]


def _document(objects: list[dict[str, Any]]) -> str:
    return HEADER + yaml.safe_dump_all(objects, sort_keys=False, width=100)


def generated_files(catalog: Catalog) -> dict[str, str]:
    """File name in ``deploy/k8s/base/`` → its text."""
    return {
        TOPICS_FILE: _document(kafka_topics(catalog)),
        USERS_FILE: _document(kafka_users(catalog)),
    }


def kubernetes_base_dir() -> Path | None:
    """``deploy/k8s/base`` when this package runs from a source checkout, else None."""
    root = Path(__file__).resolve().parents[2]
    base = root / "deploy" / "k8s" / "base"
    return base if (root / "pyproject.toml").is_file() and base.is_dir() else None


def manifest_copy(catalog: Catalog) -> CatalogCopy | None:
    """The generated files of ``deploy/k8s/base`` with the text each must have; None
    outside a source checkout."""
    base = kubernetes_base_dir()
    if base is None:
        return None
    return CatalogCopy("kubernetes", base, generated_files(catalog))
