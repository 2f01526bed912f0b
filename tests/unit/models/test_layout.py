"""The layout rules of model storage: names, keys, versions, part sizes, SavedModel scans."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mulambda.errors import ModelStoreError
from mulambda.models.layout import (
    MANIFEST_NAME,
    MAX_OBJECT_SIZE,
    MAX_PARTS,
    MAX_VERSION,
    MIN_PART_SIZE,
    LocalFile,
    check_layout,
    check_model_name,
    check_version,
    effective_part_size,
    manifest_key,
    next_version,
    object_key,
    parse_key,
    safe_relpath,
    scan_saved_model,
    stale_keys,
    upload_order,
    version_prefix,
    visible_versions,
)

pytestmark = pytest.mark.unit


def _saved_model(root: Path) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"x" * 100)
    return root


# --- names and keys ---


@pytest.mark.parametrize("name", ["wine", "Wine-2", "a", "m.v1_b:c@d", "9" * 200])
def test_valid_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a/b", "-wine", ".hidden", "has space", "ü", "9" * 201, "a\nb", "../x"]
)
def test_invalid_model_names(name: str) -> None:
    with pytest.raises(ModelStoreError):
        check_model_name(name)


@pytest.mark.parametrize("version", [0, -1, MAX_VERSION + 1, True, 1.0, "3"])
def test_invalid_versions(version: object) -> None:
    with pytest.raises(ModelStoreError):
        check_version(version)  # type: ignore[arg-type]


def test_keys_follow_tf_serving_layout() -> None:
    assert version_prefix("wine", 3) == "models/wine/3/"
    assert object_key("wine", 3, "variables/variables.index") == (
        "models/wine/3/variables/variables.index"
    )
    assert manifest_key("wine", 3) == f"models/wine/3/{MANIFEST_NAME}"
    # the trailing slash keeps version 1 from matching version 10
    assert not object_key("wine", 10, "saved_model.pb").startswith(version_prefix("wine", 1))


def test_object_key_refuses_overlong_keys() -> None:
    with pytest.raises(ModelStoreError, match="longer than"):
        object_key("wine", 1, "d/" * 510 + "f")


def test_parse_key_round_trips_and_rejects_foreign_keys() -> None:
    key = object_key("wine", 12, "variables/variables.index")
    assert parse_key(key) == ("wine", 12, "variables/variables.index")
    for foreign in [
        "models/wine/3",  # no file part
        "models/wine/03/saved_model.pb",  # not canonical
        "models/wine/x/saved_model.pb",
        "models/wine/0/saved_model.pb",
        "other/wine/3/saved_model.pb",
        "models/-bad/3/saved_model.pb",
        "models/wine/3/",
    ]:
        assert parse_key(foreign) is None, foreign


def test_only_versions_with_a_manifest_are_visible() -> None:
    keys = [
        "models/wine/1/saved_model.pb",
        manifest_key("wine", 1),
        "models/wine/2/saved_model.pb",  # interrupted upload: no manifest
        "models/wine/10/saved_model.pb",
        manifest_key("wine", 10),
        manifest_key("iris", 4),
        "models/iris/4/variables/x",
        "models/junk",
        "models/ghost/7/saved_model.pb",
    ]
    assert visible_versions(keys) == {"iris": [4], "wine": [1, 10]}


def test_next_version() -> None:
    assert next_version([]) == 1
    assert next_version([1, 10, 3]) == 11
    with pytest.raises(ModelStoreError):
        next_version([MAX_VERSION])


def test_stale_keys_are_those_not_rewritten() -> None:
    existing = ["p/a", "p/b", "p/c"]
    assert stale_keys(existing, {"p/b", "p/d"}) == ["p/a", "p/c"]


def test_effective_part_size_grows_only_beyond_the_part_limit() -> None:
    assert effective_part_size(11 * 1024 * 1024, MIN_PART_SIZE) == MIN_PART_SIZE
    big = MIN_PART_SIZE * MAX_PARTS + 1
    grown = effective_part_size(big, MIN_PART_SIZE)
    assert grown > MIN_PART_SIZE
    assert grown % (1024 * 1024) == 0
    assert grown * MAX_PARTS >= big
    largest = effective_part_size(MAX_OBJECT_SIZE, MIN_PART_SIZE)
    assert largest * MAX_PARTS >= MAX_OBJECT_SIZE
    with pytest.raises(ModelStoreError, match="larger than S3 allows"):
        effective_part_size(MAX_OBJECT_SIZE + 1, MIN_PART_SIZE)


@pytest.mark.parametrize("rel", ["", "/abs", "a/../b", "..", "a//b", "./a", "a\\b", "a/"])
def test_unsafe_relative_paths(rel: str) -> None:
    with pytest.raises(ModelStoreError, match="unsafe"):
        safe_relpath(rel)


# --- layout ---


def test_layout_needs_saved_model_file() -> None:
    check_layout({"saved_model.pb"}, ())
    check_layout({"saved_model.pbtxt", "variables/variables.index"}, {"variables"})
    with pytest.raises(ModelStoreError, match=r"no saved_model\.pb"):
        check_layout({"variables/variables.index"}, {"variables"})
    with pytest.raises(ModelStoreError, match=r"no saved_model\.pb"):
        check_layout({"sub/saved_model.pb"}, {"sub"})
    with pytest.raises(ModelStoreError, match="variables is a file"):
        check_layout({"saved_model.pb", "variables"}, ())
    with pytest.raises(ModelStoreError, match="reserved"):
        check_layout({"saved_model.pb", f"assets/{MANIFEST_NAME}"}, {"assets"})


def test_scan_lists_files_and_directories(tmp_path: Path) -> None:
    root = _saved_model(tmp_path / "m")
    model = scan_saved_model(root)
    assert [f.rel for f in model.files] == [
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]
    assert model.directories == ("assets", "variables")  # empty assets/ kept
    assert model.total_size == len(b"graph") + len(b"index") + 100


def test_scan_refuses_what_is_not_a_saved_model(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="no such directory"):
        scan_saved_model(tmp_path / "missing")
    (tmp_path / "file.pb").write_bytes(b"x")
    with pytest.raises(ModelStoreError, match="not a directory"):
        scan_saved_model(tmp_path / "file.pb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelStoreError, match="not a SavedModel"):
        scan_saved_model(tmp_path / "empty")


def test_scan_follows_inner_symlinks_and_refuses_escaping_ones(tmp_path: Path) -> None:
    root = _saved_model(tmp_path / "m")
    (root / "assets" / "vocab.txt").write_text("a\nb\n")
    os.symlink("../assets/vocab.txt", root / "variables" / "vocab-link")
    model = scan_saved_model(root)
    linked = next(f for f in model.files if f.rel == "variables/vocab-link")
    assert linked.path == (root / "assets" / "vocab.txt").resolve()
    assert linked.size == 4

    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", root / "assets" / "escape")
    with pytest.raises(ModelStoreError, match="outside the model directory"):
        scan_saved_model(root)


def test_scan_refuses_dangling_and_looping_symlinks(tmp_path: Path) -> None:
    root = _saved_model(tmp_path / "m")
    os.symlink(root / "nowhere", root / "assets" / "dangling")
    with pytest.raises(ModelStoreError, match="broken or looping"):
        scan_saved_model(root)
    (root / "assets" / "dangling").unlink()
    os.symlink("..", root / "assets" / "up")
    with pytest.raises(ModelStoreError, match="loop"):
        scan_saved_model(root)


def test_scan_refuses_special_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _saved_model(tmp_path / "m")
    os.mkfifo(root / "assets" / "fifo")  # reading it would block forever
    with pytest.raises(ModelStoreError, match="not a regular file"):
        scan_saved_model(root)
    (root / "assets" / "fifo").unlink()
    monkeypatch.chdir(root / "assets")  # a relative bind: socket paths are short-limited
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        with pytest.raises(ModelStoreError, match="not a regular file"):
            scan_saved_model(root)


def test_saved_model_file_goes_up_last() -> None:
    files = [
        LocalFile("saved_model.pb", Path("/x/saved_model.pb"), 1),
        LocalFile("variables/variables.index", Path("/x/i"), 1),
        LocalFile("assets/a", Path("/x/a"), 1),
        LocalFile("fingerprint.pb", Path("/x/f"), 1),
    ]
    assert [f.rel for f in upload_order(files)] == [
        "assets/a",
        "fingerprint.pb",
        "variables/variables.index",
        "saved_model.pb",
    ]


def test_an_mlserver_model_folder_is_a_model_and_its_settings_go_up_last(tmp_path: Path) -> None:
    root = tmp_path / "wine"
    root.mkdir()
    (root / "model.joblib").write_bytes(b"pickle")
    (root / "model-settings.json").write_text('{"name": "wine"}')
    model = scan_saved_model(root)
    assert [f.rel for f in upload_order(model.files)] == ["model.joblib", "model-settings.json"]
