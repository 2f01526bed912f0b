"""The topic catalog: its entries, the generated documents and both copies of the files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import mulambda.cli.topics
from mulambda.errors import ConfigurationError
from mulambda.wire.catalog import (
    CATALOG_FILE,
    PUBLISHED_HEADER,
    CatalogCopy,
    Topic,
    catalog_copies,
    catalog_source,
    checkout_dir,
    generated_files,
    load_catalog,
    packaged_dir,
)
from mulambda.wire.events import ALL_MESSAGE_TYPES

pytestmark = pytest.mark.unit


REPO = Path(__file__).resolve().parents[3]


def test_generated_files_match_the_models() -> None:
    """Fails when events.py or catalog.yaml changed without `mulambda topics generate`."""
    copies = catalog_copies(load_catalog())
    # Both copies are checked from a checkout; a missing one must not pass silently.
    assert [(c.label, c.directory) for c in copies] == [
        ("package", packaged_dir()),
        ("published", REPO / "topics"),
    ]
    stale = {copy.label: copy.stale() for copy in copies}
    assert stale == {"package": [], "published": []}, f"run `mulambda topics generate`: {stale}"


def test_published_copy_is_the_source_with_a_header() -> None:
    published = (REPO / "topics" / CATALOG_FILE).read_text(encoding="utf-8")
    assert published == PUBLISHED_HEADER + catalog_source()
    assert load_catalog(path=REPO / "topics" / CATALOG_FILE) == load_catalog()
    assert checkout_dir() == REPO / "topics"


def test_a_drifted_copy_is_reported_and_rewritten(tmp_path: Path) -> None:
    copy = CatalogCopy("test", tmp_path, {"a.txt": "one\n", "sub/b.json": "{}\n"})
    assert copy.stale() == ["a.txt", "sub/b.json"]
    assert copy.write() == [tmp_path / "a.txt", tmp_path / "sub" / "b.json"]
    assert copy.stale() == []
    (tmp_path / "sub" / "b.json").write_text("[]\n")
    assert copy.stale() == ["sub/b.json"]
    assert copy.write() == [tmp_path / "sub" / "b.json"]
    assert (tmp_path / "sub" / "b.json").read_text() == "{}\n"


def test_generate_check_fails_on_either_copy_and_generate_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = generated_files(load_catalog())
    package = CatalogCopy("package", tmp_path / "package", generated)
    published = CatalogCopy(
        "published", tmp_path / "topics", {CATALOG_FILE: catalog_source(), **generated}
    )
    monkeypatch.setattr(mulambda.cli.topics, "catalog_copies", lambda _: [package, published])
    package.write()
    published.write()
    runner = CliRunner()
    ok = runner.invoke(mulambda.cli.topics.topics, ["generate", "--check"])
    assert ok.exit_code == 0, ok.output
    assert f"published copy is up to date: {tmp_path / 'topics'}" in ok.output

    (tmp_path / "topics" / "asyncapi.yaml").write_text("stale\n")
    (tmp_path / "package" / "schemas" / "dead-letter.json").unlink()
    failed = runner.invoke(mulambda.cli.topics.topics, ["generate", "--check"])
    assert failed.exit_code == 1
    assert "package: schemas/dead-letter.json, published: asyncapi.yaml" in failed.output
    assert (
        tmp_path / "topics" / "asyncapi.yaml"
    ).read_text() == "stale\n"  # --check writes nothing

    fixed = runner.invoke(mulambda.cli.topics.topics, ["generate"])
    assert fixed.exit_code == 0, fixed.output
    assert package.stale() == published.stale() == []


def test_load_catalog_reports_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read topic catalog"):
        load_catalog(path=tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("topics: []\n")
    with pytest.raises(ConfigurationError, match="expected a 'topics' mapping"):
        load_catalog(path=tmp_path / "bad.yaml")


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
