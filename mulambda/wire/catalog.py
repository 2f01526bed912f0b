"""The topic catalog (``catalog.yaml``) and the documents generated from it.

Pure: reading YAML and building JSON Schema / AsyncAPI needs no broker. Applying the
catalog to Kafka lives in ``mulambda.kafka``.

The catalog travels with the package: ``mulambda/wire/topics/`` holds ``catalog.yaml``
(the source, edited by hand), ``schemas/*.json`` and ``asyncapi.yaml`` (generated), read
through :mod:`importlib.resources`, so an installed wheel needs no checkout. A source
checkout also has the top-level ``topics/``: the published copy of the same files, which
``mulambda topics generate`` writes too (:func:`catalog_copies`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

import yaml

from mulambda.errors import ConfigurationError
from mulambda.wire.events import MESSAGE_TYPES, WireModel

CATALOG_FILE: Final = "catalog.yaml"
"""Name of the catalog source in either copy."""

PUBLISHED_HEADER: Final = (
    "# Published copy of mulambda/wire/topics/catalog.yaml, written by `mulambda topics\n"
    "# generate`: edit that file, not this one.\n#\n"
)
"""First lines of the published ``topics/catalog.yaml``, so nobody edits the copy."""


def packaged_dir() -> Traversable:
    """``mulambda/wire/topics/`` as installed: catalog source and generated documents."""
    return resources.files("mulambda.wire") / "topics"


def checkout_dir() -> Path | None:
    """The top-level ``topics/`` when this package runs from a source checkout, else None."""
    root = Path(__file__).resolve().parents[2]
    return root / "topics" if (root / "pyproject.toml").is_file() else None


ROLES: Final = ("selector", "router", "companion", "launcher", "administrator", "producer")
"""The principals a deployment gives Kafka credentials to; ``producer`` is a producer
application (one that sends inference requests and reads their results)."""


@dataclass(frozen=True, slots=True)
class TopicAccess:
    """The roles that may read and write one topic (the catalog's ``access`` entry)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


class Topic(StrEnum):
    """Logical topic keys of the catalog; code refers to topics only through these."""

    EXECUTOR_REGISTRATIONS = "executor-registrations"
    CLIENT_REGISTRATIONS = "client-registrations"
    EXECUTOR_STATUS = "executor-status"
    LATENCY_MEASUREMENTS = "latency-measurements"
    OBSERVED_LATENCIES = "observed-latencies"
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
    access: TopicAccess = TopicAccess()

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


def catalog_source() -> str:
    """Text of the packaged ``catalog.yaml``."""
    path = packaged_dir() / CATALOG_FILE
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read topic catalog {path}: {exc}") from exc


def load_catalog(prefix: str = "", path: Path | None = None) -> Catalog:
    """Read ``catalog.yaml`` (default: the packaged one); ConfigurationError when malformed."""
    source = path if path is not None else packaged_dir() / CATALOG_FILE
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read topic catalog {source}: {exc}") from exc
    entries = raw.get("topics") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise ConfigurationError(f"{source}: expected a 'topics' mapping")
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
                access=_access(entry["access"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"{source}: bad entry {key!r}: {exc!r}") from exc
    missing = set(Topic) - specs.keys()
    if missing:
        raise ConfigurationError(f"{source}: missing topics {sorted(missing)}")
    return Catalog(specs, prefix)


def _access(raw: Any) -> TopicAccess:
    # Every topic names its readers and writers: a topic nobody may use is a mistake, and
    # an unknown role (a typo) would silently grant nothing.
    if not isinstance(raw, dict) or set(raw) - {"read", "write"}:
        raise ValueError(f"access must be a mapping with read and write lists, not {raw!r}")
    lists = {}
    for what in ("read", "write"):
        roles = raw.get(what) or []
        if not isinstance(roles, list):
            raise ValueError(f"access.{what} must be a list of roles, not {roles!r}")
        unknown = [role for role in roles if role not in ROLES]
        if unknown:
            raise ValueError(f"access.{what}: unknown roles {unknown} (known: {', '.join(ROLES)})")
        lists[what] = tuple(str(role) for role in roles)
    return TopicAccess(read=lists["read"], write=lists["write"])


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
            "Generated from mulambda/wire/topics/catalog.yaml and mulambda/wire/events.py; "
            "do not edit.",
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
    """Relative path → text of every generated file (schemas and the AsyncAPI document)."""
    files = {
        f"schemas/{model.type_name}.json": json.dumps(message_schema(model), indent=2) + "\n"
        for model in MESSAGE_TYPES.values()
    }
    files["asyncapi.yaml"] = (
        "# Generated by `mulambda topics generate`; do not edit.\n"
        + yaml.safe_dump(asyncapi_document(catalog), sort_keys=False, width=100)
    )
    return files


@dataclass(frozen=True, slots=True)
class CatalogCopy:
    """One place the catalog files live, with the text each file there must have."""

    label: str
    """``package`` (``mulambda/wire/topics/``) or ``published`` (the checkout's ``topics/``)."""
    directory: Traversable
    files: Mapping[str, str]
    """Relative path → expected text."""

    def stale(self) -> list[str]:
        """Relative paths whose file is missing or differs from the expected text."""
        stale = []
        for rel, text in self.files.items():
            target = self.directory.joinpath(*rel.split("/"))
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(rel)
        return stale

    def write(self) -> list[Path]:
        """Write every stale file; return the paths written."""
        if not isinstance(self.directory, Path):
            raise ConfigurationError(f"{self.directory} is not a writable directory")
        written = []
        for rel in self.stale():
            target = self.directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.files[rel], encoding="utf-8")
            written.append(target)
        return written


def catalog_copies(catalog: Catalog) -> list[CatalogCopy]:
    """The packaged copy (generated files next to the source) and, in a source checkout,
    the published ``topics/`` (the source with :data:`PUBLISHED_HEADER`, and the same
    generated files)."""
    generated = generated_files(catalog)
    copies = [CatalogCopy("package", packaged_dir(), generated)]
    published = checkout_dir()
    if published is not None:
        files = {CATALOG_FILE: PUBLISHED_HEADER + catalog_source(), **generated}
        copies.append(CatalogCopy("published", published, files))
    return copies
