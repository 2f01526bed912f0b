from __future__ import annotations

import pytest

from mulambda.wire.catalog import CATALOG_DIR, Topic, generated_files, load_catalog
from mulambda.wire.events import ALL_MESSAGE_TYPES

pytestmark = pytest.mark.unit


def test_generated_files_match_the_models() -> None:
    """Fails when events.py or catalog.yaml changed without `mulambda topics generate`."""
    stale = [
        rel
        for rel, text in generated_files(load_catalog()).items()
        if not (CATALOG_DIR / rel).exists() or (CATALOG_DIR / rel).read_text() != text
    ]
    assert stale == [], f"run `mulambda topics generate`; stale: {stale}"


def test_catalog_covers_every_topic_and_message() -> None:
    catalog = load_catalog("p.")
    assert set(catalog.specs) == set(Topic)
    assert {spec.message for spec in catalog.specs.values()} == set(ALL_MESSAGE_TYPES)
    assert catalog.name(Topic.DEAD_LETTERS) == "p.mulambda.dead-letters"
    assert catalog.by_name("p.mulambda.dead-letters") is catalog.spec(Topic.DEAD_LETTERS)


def test_registration_topics_are_compacted() -> None:
    catalog = load_catalog()
    for topic in (Topic.EXECUTOR_REGISTRATIONS, Topic.CLIENT_REGISTRATIONS):
        assert catalog.spec(topic).config["cleanup.policy"] == "compact"


def test_asyncapi_document_describes_every_channel() -> None:
    import yaml

    doc = yaml.safe_load(generated_files(load_catalog())["asyncapi.yaml"])
    assert doc["asyncapi"].startswith("3.")
    assert set(doc["channels"]) == {t.value for t in Topic}
    for channel in doc["channels"].values():
        (ref,) = channel["messages"].values()
        name = ref["$ref"].rsplit("/", 1)[1]
        assert name in doc["components"]["messages"]


def test_generated_schema_rejects_what_the_model_rejects() -> None:
    import json

    schema = json.loads((CATALOG_DIR / "schemas" / "selection-request.json").read_text())
    weights = schema["$defs"]["SoftWeights"]["properties"]["latency"]
    assert (weights["minimum"], weights["maximum"]) == (0.0, 1.0)
    assert "traits" in schema["required"]
