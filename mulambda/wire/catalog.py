"""The topic catalog (``topics/catalog.yaml``) and the documents generated from it.

Pure: reading YAML and building JSON Schema / AsyncAPI needs no broker. Applying the
catalog to Kafka lives in ``mulambda.kafka``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from mulambda.errors import ConfigurationError
from mulambda.wire.events import MESSAGE_TYPES, WireModel

CATALOG_DIR = Path(os.environ.get("MULAMBDA_TOPICS_DIR", Path(__file__).parents[2] / "topics"))
"""Where ``catalog.yaml``, ``schemas/`` and ``asyncapi.yaml`` live."""


class Topic(StrEnum):
    """Logical topic keys of the catalog; code refers to topics only through these."""

    EXECUTOR_REGISTRATIONS = "executor-registrations"
    CLIENT_REGISTRATIONS = "client-registrations"
    EXECUTOR_STATUS = "executor-status"
    LATENCY_MEASUREMENTS = "latency-measurements"
    SELECTION_REQUESTS = "selection-requests"
    SELECTION_REPLIES = "selection-replies"
    INFERENCE_REQUESTS = "inference-requests"
    INFERENCE_RESULTS = "inference-results"
    DEAD_LETTERS = "dead-letters"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One catalog entry."""

    key: Topic
    name: str
    message: type[WireModel]
    record_key: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def full_name(self, prefix: str = "") -> str:
        """The topic's name on the broker, with the deployment's prefix."""
        return f"{prefix}{self.name}"


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every topic, by logical key, with the prefix of this deployment."""

    specs: Mapping[Topic, TopicSpec]
    prefix: str = ""

    def name(self, topic: Topic) -> str:
        """Full broker name of ``topic``."""
        return self.specs[topic].full_name(self.prefix)

    def spec(self, topic: Topic) -> TopicSpec:
        """The entry for ``topic``."""
        return self.specs[topic]

    def by_name(self, full_name: str) -> TopicSpec | None:
        """The entry whose full name is ``full_name``, if any."""
        for spec in self.specs.values():
            if spec.full_name(self.prefix) == full_name:
                return spec
        return None

    def with_prefix(self, prefix: str) -> Catalog:
        """The same catalog under another prefix."""
        return Catalog(self.specs, prefix)


def load_catalog(prefix: str = "", path: Path | None = None) -> Catalog:
    """Read ``catalog.yaml``; raise ConfigurationError on a malformed entry."""
    path = path or CATALOG_DIR / "catalog.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read topic catalog {path}: {exc}") from exc
    entries = raw.get("topics") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise ConfigurationError(f"{path}: expected a 'topics' mapping")
    specs: dict[Topic, TopicSpec] = {}
    for key, entry in entries.items():
        try:
            topic = Topic(key)
            specs[topic] = TopicSpec(
                key=topic,
                name=str(entry["name"]),
                message=MESSAGE_TYPES[entry["message"]],
                record_key=str(entry.get("key", "")),
                partitions=int(entry["partitions"]),
                replication=int(entry.get("replication", 1)),
                config={str(k): str(v) for k, v in (entry.get("config") or {}).items()},
                description=str(entry.get("description", "")).strip(),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"{path}: bad entry {key!r}: {exc!r}") from exc
    missing = set(Topic) - specs.keys()
    if missing:
        raise ConfigurationError(f"{path}: missing topics {sorted(missing)}")
    return Catalog(specs, prefix)


# --- generated documents -------------------------------------------------------------


def message_schema(model: type[WireModel]) -> dict[str, Any]:
    """JSON Schema (2020-12) of one message type, as it appears on the wire."""
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://mulambda.dev/schemas/{model.type_name}.json"
    return schema


def asyncapi_document(catalog: Catalog) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of every channel (topic) and message in the catalog."""
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, spec in catalog.specs.items():
        msg_name = spec.message.__name__
        messages[msg_name] = {
            "name": spec.message.type_name,
            "title": msg_name,
            "summary": (spec.message.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"./schemas/{spec.message.type_name}.json"},
        }
        channels[topic.value] = {
            "address": spec.name,
            "description": spec.description,
            "messages": {msg_name: {"$ref": f"#/components/messages/{msg_name}"}},
            "bindings": {
                "kafka": {
                    "topic": spec.name,
                    "partitions": spec.partitions,
                    "replicas": spec.replication,
                    "topicConfiguration": _asyncapi_topic_config(spec.config),
                    "bindingVersion": "0.5.0",
                }
            },
        }
        operations[f"send-{topic.value}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic.value}"},
            "summary": f"Publish to {spec.name}; record key: {spec.record_key}",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "MuLambda",
            "version": "1",
            "description": "Trait-based model selection and inference routing over Kafka. "
            "Generated from topics/catalog.yaml and mulambda/wire/events.py; do not edit.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _asyncapi_topic_config(config: Mapping[str, str]) -> dict[str, Any]:
    # The AsyncAPI Kafka binding knows only a few configs, and wants them typed.
    known: dict[str, Any] = {}
    if "cleanup.policy" in config:
        known["cleanup.policy"] = config["cleanup.policy"].split(",")
    for name in ("retention.ms", "delete.retention.ms"):
        if name in config:
            known[name] = int(config[name])
    return known


def generated_files(catalog: Catalog) -> dict[str, str]:
    """Relative path under ``topics/`` → text, for every generated file."""
    files = {
        f"schemas/{model.type_name}.json": json.dumps(message_schema(model), indent=2) + "\n"
        for model in MESSAGE_TYPES.values()
    }
    files["asyncapi.yaml"] = (
        "# Generated by `mulambda topics generate`; do not edit.\n"
        + yaml.safe_dump(asyncapi_document(catalog), sort_keys=False, width=100)
    )
    return files


def write_generated(catalog: Catalog, directory: Path | None = None) -> list[Path]:
    """Write every generated file; return the paths whose content changed."""
    directory = directory or CATALOG_DIR
    changed = []
    for rel, text in generated_files(catalog).items():
        target = directory / rel
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(target)
    return changed
