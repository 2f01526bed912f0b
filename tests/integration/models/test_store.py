"""Model storage against the real MinIO: round trips, checksums, multipart, partial uploads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from click.testing import CliRunner, Result
from minio import Minio
from minio.deleteobjects import DeleteObject
from urllib3.exceptions import ProtocolError

from mulambda.cli.models import models
from mulambda.errors import ModelStoreError, ObjectStoreError
from mulambda.models.layout import MANIFEST_NAME, MIN_PART_SIZE, manifest_key
from mulambda.models.store import ModelStore
from tests.conftest import Infra

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="session")
def raw(infra: Infra) -> Minio:
    """A plain minio client, to look behind the store's back and to tamper."""
    return Minio(
        infra.minio_endpoint,
        access_key=infra.minio_access_key,
        secret_key=infra.minio_secret_key,
        secure=False,
    )


@pytest.fixture(scope="session")
def bucket(raw: Minio) -> Iterator[str]:
    """A bucket for this test session, emptied and removed at the end."""
    name = f"mulambda-test-{uuid.uuid4().hex[:12]}"
    yield name
    if raw.bucket_exists(name):
        keys = [o.object_name for o in raw.list_objects(name, recursive=True)]
        errors = list(raw.remove_objects(name, [DeleteObject(k) for k in keys if k]))
        assert not errors, errors
        raw.remove_bucket(name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def store(infra: Infra, bucket: str) -> AsyncIterator[ModelStore]:
    """The store under test, with the smallest part size S3 allows."""
    async with ModelStore(
        infra.minio_endpoint,
        infra.minio_access_key,
        infra.minio_secret_key,
        bucket=bucket,
        part_size=MIN_PART_SIZE,
    ) as model_store:
        yield model_store


def _name() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def _write_model(root: Path, seed: str, *, big: int = 0, extra: bool = False) -> Path:
    """A minimal SavedModel-shaped directory (dummy bytes; real models are tested elsewhere)."""
    (root / "variables").mkdir(parents=True)
    (root / "assets.extra").mkdir()  # empty: must survive the round trip
    (root / "saved_model.pb").write_bytes(f"graph {seed}".encode() + os.urandom(64))
    (root / "fingerprint.pb").write_bytes(os.urandom(32))
    (root / "variables" / "variables.index").write_bytes(f"index {seed}".encode())
    data = os.urandom(big) if big else f"weights {seed}".encode() * 100
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(data)
    if extra:
        (root / "assets").mkdir()
        (root / "assets" / "vocab.txt").write_text(f"vocabulary {seed}\n")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _dirs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def _keys(raw: Minio, bucket: str, prefix: str) -> set[str]:
    objects = raw.list_objects(bucket, prefix=prefix, recursive=True)
    return {o.object_name for o in objects if o.object_name is not None}


async def test_round_trip_with_checksums(
    store: ModelStore, raw: Minio, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    first = _write_model(tmp_path / "v1", "one", extra=True)
    second = _write_model(tmp_path / "v2", "two")

    m1 = await store.upload(first, name)
    m2 = await store.upload(second, name)
    assert (m1.version, m2.version) == (1, 2)
    assert await store.list_versions(name) == [1, 2]
    assert (await store.list_models())[name] == [1, 2]

    # the manifest object holds the sha256 of every uploaded file
    stored = json.loads(raw.get_object(bucket, manifest_key(name, 2)).read())
    assert {f["path"]: f["sha256"] for f in stored["files"]} == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in _tree(second).items()
    }
    assert _keys(raw, bucket, f"models/{name}/2/") == {
        f"models/{name}/2/{rel}" for rel in [*_tree(second), MANIFEST_NAME]
    }

    latest = await store.download(name, dest_dir=tmp_path / "dl" / "latest")
    assert latest.version == 2
    assert _tree(tmp_path / "dl" / "latest") == _tree(second)
    assert _dirs(tmp_path / "dl" / "latest") == _dirs(second)  # empty assets.extra kept

    await store.download(name, 1, dest_dir=tmp_path / "dl" / "1")
    assert _tree(tmp_path / "dl" / "1") == _tree(first)
    # nothing but the two destinations in the parent: no temporary directories left
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["1", "latest"]


async def test_download_refuses_non_empty_destination_unless_overwrite(
    store: ModelStore, tmp_path: Path
) -> None:
    name = _name()
    source = _write_model(tmp_path / "src", "x")
    await store.upload(source, name)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    with pytest.raises(ModelStoreError, match="not empty"):
        await store.download(name, dest_dir=dest)
    assert (dest / "stale.txt").exists()
    await store.download(name, dest_dir=dest, overwrite=True)
    assert _tree(dest) == _tree(source)
    with pytest.raises(ModelStoreError, match="no version 7"):
        await store.download(name, 7, dest_dir=tmp_path / "other")
    with pytest.raises(ModelStoreError, match="no model named"):
        await store.download(_name(), dest_dir=tmp_path / "other")


async def test_reupload_refused_without_force_replaced_with_force(
    store: ModelStore, raw: Minio, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    original = _write_model(tmp_path / "a", "a", extra=True)
    replacement = _write_model(tmp_path / "b", "b")
    await store.upload(original, name, 5)

    with pytest.raises(ModelStoreError, match="already exists") as refused:
        await store.upload(replacement, name, 5)
    assert not refused.value.retriable
    await store.download(name, 5, dest_dir=tmp_path / "after-refusal")
    assert _tree(tmp_path / "after-refusal") == _tree(original)

    manifest = await store.upload(replacement, name, 5, force=True)
    assert manifest.version == 5
    # assets/vocab.txt was only in the old upload: gone from the bucket, not just unlisted
    assert _keys(raw, bucket, f"models/{name}/5/") == {
        f"models/{name}/5/{rel}" for rel in [*_tree(replacement), MANIFEST_NAME]
    }
    await store.download(name, 5, dest_dir=tmp_path / "after-force")
    assert _tree(tmp_path / "after-force") == _tree(replacement)
    assert await store.list_versions(name) == [5]


async def test_large_file_goes_up_in_parts(
    store: ModelStore, raw: Minio, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    source = _write_model(tmp_path / "big", "big", big=11 * MIB)
    manifest = await store.upload(source, name)
    key = f"models/{name}/1/variables/variables.data-00000-of-00001"
    stat = raw.stat_object(bucket, key)
    assert stat.size == 11 * MIB
    assert stat.etag is not None
    assert stat.etag.endswith("-3"), stat.etag  # multipart ETag: 5 + 5 + 1 MiB
    weights = next(f for f in manifest.files if f.path.endswith("data-00000-of-00001"))
    expected = (source / "variables" / "variables.data-00000-of-00001").read_bytes()
    assert weights.sha256 == hashlib.sha256(expected).hexdigest()
    await store.download(name, dest_dir=tmp_path / "dl")
    assert _tree(tmp_path / "dl") == _tree(source)


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, store: ModelStore, n: int) -> list[str]:
    """Make the store's n-th object write fail like a dropped connection."""
    client = store._client  # simulate a failure underneath the store
    assert client is not None
    original: Callable[..., Any] = client.put_object
    written: list[str] = []

    def put_object(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if len(written) + 1 == n:
            raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        result = original(bucket, key, *args, **kwargs)
        written.append(key)
        return result

    monkeypatch.setattr(client, "put_object", put_object)
    return written


async def test_interrupted_upload_leaves_no_visible_version(
    store: ModelStore,
    raw: Minio,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _name()
    with_extra = _write_model(tmp_path / "a", "a", extra=True)
    written = _fail_on_call(monkeypatch, store, 3)
    with pytest.raises(ObjectStoreError) as failed:
        await store.upload(with_extra, name)
    assert failed.value.retriable
    monkeypatch.undo()

    # objects were written, but without a manifest there is no version
    assert len(written) == 2
    assert _keys(raw, bucket, f"models/{name}/") == set(written)
    assert await store.list_versions(name) == []
    assert name not in await store.list_models()
    with pytest.raises(ModelStoreError, match="no model named"):
        await store.download(name, dest_dir=tmp_path / "dl")
    with pytest.raises(ModelStoreError, match="no version 1"):
        await store.download(name, 1, dest_dir=tmp_path / "dl")

    # a retry (no force needed) takes version 1 and clears the leftovers
    plain = _write_model(tmp_path / "b", "b")
    manifest = await store.upload(plain, name)
    assert manifest.version == 1
    assert _keys(raw, bucket, f"models/{name}/") == {
        f"models/{name}/1/{rel}" for rel in [*_tree(plain), MANIFEST_NAME]
    }

    # a forced re-upload that fails leaves the version invisible, never half old, half new
    _fail_on_call(monkeypatch, store, 2)
    with pytest.raises(ObjectStoreError):
        await store.upload(with_extra, name, 1, force=True)
    monkeypatch.undo()
    assert await store.list_versions(name) == []


async def test_corruption_is_detected_on_download(
    store: ModelStore, raw: Minio, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    source = _write_model(tmp_path / "src", "c")
    await store.upload(source, name)
    key = f"models/{name}/1/variables/variables.index"
    original = (source / "variables" / "variables.index").read_bytes()

    flipped = bytes([original[0] ^ 0xFF]) + original[1:]  # same size, one byte differs
    raw.put_object(bucket, key, io.BytesIO(flipped), len(flipped))
    dest = tmp_path / "dl" / "model"
    with pytest.raises(ModelStoreError, match="sha256") as corrupt:
        await store.download(name, dest_dir=dest)
    assert not corrupt.value.retriable
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())

    longer = original + b"tail"
    raw.put_object(bucket, key, io.BytesIO(longer), len(longer))
    with pytest.raises(ModelStoreError, match="larger than"):
        await store.download(name, dest_dir=dest)

    raw.remove_object(bucket, key)
    with pytest.raises(ModelStoreError, match="object missing"):
        await store.download(name, dest_dir=dest)
    assert not dest.exists()


async def test_not_a_saved_model_is_refused(
    store: ModelStore, raw: Minio, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    no_graph = tmp_path / "no-graph"
    (no_graph / "variables").mkdir(parents=True)
    (no_graph / "variables" / "variables.index").write_bytes(b"i")
    with pytest.raises(ModelStoreError, match="not a SavedModel"):
        await store.upload(no_graph, name)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ModelStoreError, match="not a directory"):
        await store.upload(tmp_path / "file", name)
    escaping = _write_model(tmp_path / "escaping", "e")
    os.symlink(tmp_path / "file", escaping / "variables" / "link")
    with pytest.raises(ModelStoreError, match="outside the model directory"):
        await store.upload(escaping, name)
    with pytest.raises(ModelStoreError, match="invalid model name"):
        await store.upload(_write_model(tmp_path / "ok", "ok"), "a/b")
    assert _keys(raw, bucket, f"models/{name}/") == set()


async def test_delete_removes_manifest_and_objects(
    store: ModelStore, raw: Minio, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    source = _write_model(tmp_path / "src", "d")
    await store.upload(source, name)
    await store.upload(source, name)
    removed = await store.delete(name, 1)
    assert removed == len(_tree(source)) + 1
    assert await store.list_versions(name) == [2]
    assert _keys(raw, bucket, f"models/{name}/1/") == set()
    with pytest.raises(ModelStoreError, match="no version 1"):
        await store.delete(name, 1)
    # the next default version is above the highest *visible* one
    assert (await store.upload(source, name)).version == 3


async def test_unreachable_endpoint_is_retriable(infra: Infra) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ObjectStoreError, match="unreachable") as failed:
        await ModelStore(f"127.0.0.1:{port}", "k", "s", bucket="any-bucket", timeout_s=2).start()
    assert failed.value.retriable
    assert time.monotonic() - started < 20


async def test_wrong_credentials_are_not_retriable(infra: Infra) -> None:
    store = ModelStore(
        infra.minio_endpoint, infra.minio_access_key, "wrong-secret", bucket="any-bucket"
    )
    with pytest.raises(ObjectStoreError, match="SignatureDoesNotMatch") as refused:
        await store.start()
    assert not refused.value.retriable
    assert not store.started


async def _cli(infra: Infra, bucket: str, *args: str) -> Result:
    env = {**infra.env(), "MULAMBDA_MINIO_BUCKET": bucket}
    # A thread: the command runs its own event loop with asyncio.run.
    return await asyncio.to_thread(CliRunner().invoke, models, list(args), env=env)


async def test_cli_upload_list_download_delete(
    infra: Infra, store: ModelStore, bucket: str, tmp_path: Path
) -> None:
    name = _name()
    source = _write_model(tmp_path / "src", "cli")

    up = await _cli(infra, bucket, "upload", str(source), "--name", name)
    assert up.exit_code == 0, up.output
    assert f"uploaded {name} version 1" in up.stdout
    assert await store.list_versions(name) == [1]

    again = await _cli(infra, bucket, "upload", str(source), "--name", name, "--version", "1")
    assert again.exit_code == 1
    assert "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    forced = await _cli(
        infra, bucket, "upload", str(source), "--name", name, "--version", "1", "--force"
    )
    assert forced.exit_code == 0, forced.output

    listed = await _cli(infra, bucket, "list")
    assert listed.exit_code == 0, listed.output
    assert f"{name}\t1" in listed.stdout.splitlines()

    dest = tmp_path / "dl"
    down = await _cli(infra, bucket, "download", name, str(dest))
    assert down.exit_code == 0, down.output
    assert _tree(dest) == _tree(source)

    bad = await _cli(infra, bucket, "upload", str(tmp_path), "--name", name)
    assert bad.exit_code == 1
    assert "not a SavedModel" in bad.stderr

    gone = await _cli(infra, bucket, "delete", name, "--version", "1")
    assert gone.exit_code == 0, gone.output
    assert await store.list_versions(name) == []
    missing = await _cli(infra, bucket, "download", name, str(tmp_path / "again"))
    assert missing.exit_code == 1
    assert "no model named" in missing.stderr
