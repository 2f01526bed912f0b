"""Strimzi resources generated from the topic catalog: one ``KafkaTopic`` per catalog entry.

Pure: catalog in, plain dicts out. ``mulambda deploy generate`` writes them to
``deploy/k8s/base/`` and ``--check`` fails when the committed files drifted from the
catalog, the way ``mulambda topics generate --check`` does for the schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from mulambda.wire.catalog import Catalog, CatalogCopy

STRIMZI_API: Final = "kafka.strimzi.io/v1"
"""Strimzi's custom resource API (Strimzi 1.x)."""

KAFKA_CLUSTER: Final = "mulambda"
"""Name of the ``Kafka`` resource in deploy/k8s; its bootstrap Service is
``mulambda-kafka-bootstrap``."""

CLUSTER_LABEL: Final = "strimzi.io/cluster"
"""Label by which Strimzi's operators tie a topic or user to its ``Kafka``."""

TOPICS_FILE: Final = "kafka-topics.yaml"

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


def _document(objects: list[dict[str, Any]]) -> str:
    return HEADER + yaml.safe_dump_all(objects, sort_keys=False, width=100)


def generated_files(catalog: Catalog) -> dict[str, str]:
    """File name in ``deploy/k8s/base/`` → its text."""
    return {TOPICS_FILE: _document(kafka_topics(catalog))}


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
