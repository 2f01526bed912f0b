"""Manifests of stored versions: building, encoding, and refusing bad or tampered ones."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from mulambda.errors import ModelStoreError
from mulambda.models.manifest import ManifestFile, build_manifest, parse_manifest

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _entry(path: str, data: bytes) -> ManifestFile:
    return ManifestFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_manifest_round_trip() -> None:
    entries = [_entry("variables/variables.index", b"idx"), _entry("saved_model.pb", b"graph")]
    manifest = build_manifest(
        "wine", 3, entries, directories=["variables", "assets"], uploaded_at=NOW
    )
    assert [f.path for f in manifest.files] == ["saved_model.pb", "variables/variables.index"]
    assert manifest.directories == ("assets", "variables")
    assert manifest.total_size == 8
    parsed = parse_manifest(manifest.to_json(), name="wine", version=3)
    assert parsed == manifest
    assert parsed.files[0].sha256 == hashlib.sha256(b"graph").hexdigest()


def test_manifest_refuses_bad_contents() -> None:
    good = [_entry("saved_model.pb", b"g")]
    with pytest.raises(ModelStoreError, match="no saved_model"):
        build_manifest("wine", 1, [_entry("variables/x", b"x")], uploaded_at=NOW)
    with pytest.raises(ModelStoreError, match="duplicate"):
        build_manifest("wine", 1, good + good, uploaded_at=NOW)
    with pytest.raises(ModelStoreError, match="version"):
        build_manifest("wine", 0, good, uploaded_at=NOW)
    with pytest.raises(ModelStoreError, match="name"):
        build_manifest("a/b", 1, good, uploaded_at=NOW)
    with pytest.raises(ModelStoreError, match="unsafe"):
        build_manifest("wine", 1, good, directories=["../up"], uploaded_at=NOW)


def test_parse_manifest_refuses_tampering() -> None:
    manifest = build_manifest("wine", 2, [_entry("saved_model.pb", b"g")], uploaded_at=NOW)
    text = manifest.to_json()
    with pytest.raises(ModelStoreError, match="describes wine version 2"):
        parse_manifest(text, name="wine", version=5)
    with pytest.raises(ModelStoreError, match="invalid"):
        parse_manifest(text.replace(b"saved_model.pb", b"../../etc/passwd"), name="wine", version=2)
    with pytest.raises(ModelStoreError, match="invalid"):
        parse_manifest(b"{not json", name="wine", version=2)
    with pytest.raises(ModelStoreError, match="invalid"):
        parse_manifest(text.replace(b'"format": 1', b'"format": 9'), name="wine", version=2)
