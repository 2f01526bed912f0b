"""Saved models on MinIO/S3: :class:`ModelStore` uploads, lists, downloads and deletes them.

The layout (``models/{name}/{version}/...``) and the visibility rule (a version exists
once its manifest does) are in :mod:`mulambda.models.layout`; the manifest in
:mod:`mulambda.models.manifest`. This module orders the writes so those rules hold.

Uploads write every file first and the manifest last, so an interrupted upload
leaves objects behind but no visible version; uploading that version again (with or
without ``force``) replaces the leftovers. ``delete`` removes the manifest first, so a
half-deleted version is invisible too. A forced re-upload removes the old manifest before
writing anything, so it never exposes a mix of old and new files: if it fails, the
version is gone until it is uploaded again. Within a version, ``saved_model.pb`` is
written after the other files (and deleted before them), so a TF Serving that polls the
bucket directly cannot load a version whose variables are still missing.

Downloads check every file's size and sha256 against the manifest and write into a
temporary sibling of the destination, renamed into place only when all files verified:
TF Serving watching a base path never sees a partial version directory.

The minio client is synchronous; every call runs in ``asyncio.to_thread``. Its errors
are translated here: connection problems and server-side 5xx into a retriable
:class:`~mulambda.errors.ObjectStoreError`, refusals (credentials, permissions) into a
non-retriable one, and anything about the model itself (layout, missing version,
checksum mismatch, version exists) into :class:`~mulambda.errors.ModelStoreError`.

Not serialised: two uploads of the same name and version at the same time (including two
uploads picking the same default version). The last manifest wins; a version mixing both
uploads fails its checksums on download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, ParamSpec, TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util import Retry, Timeout

from mulambda.errors import ConfigurationError, ModelStoreError, MulambdaError, ObjectStoreError
from mulambda.models.layout import (
    DEFAULT_PART_SIZE,
    KEY_ROOT,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    SAVED_MODEL_FILES,
    LocalFile,
    check_model_name,
    check_version,
    effective_part_size,
    manifest_key,
    model_prefix,
    next_version,
    object_key,
    scan_saved_model,
    stale_keys,
    upload_order,
    version_prefix,
    visible_versions,
)
from mulambda.models.manifest import Manifest, ManifestFile, build_manifest, parse_manifest
from mulambda.runtime.lifecycle import Lifecycle

__all__ = ["ModelStore"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_CHUNK: Final = 1024 * 1024

# S3 error codes a retry can fix; everything else is a refusal to act on.
_RETRIABLE_S3_CODES: Final = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
    }
)


# --- error translation ---------------------------------------------------------------


def _describe_http(exc: Urllib3Error) -> str:
    inner: BaseException = exc
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        inner = exc.reason
    # urllib3 prefixes "HTTPConnection(host=..., port=...): "; the endpoint is said already
    detail = str(inner).rsplit("): ", 1)[-1] or type(inner).__name__
    if isinstance(inner, NewConnectionError | ConnectTimeoutError):
        return f"unreachable: {detail}"
    return f"failed: {detail}"


def _translate(exc: BaseException, what: str, endpoint: str) -> MulambdaError | None:
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        retriable = exc.code in _RETRIABLE_S3_CODES or status >= 500
        return ObjectStoreError(
            f"{what}: MinIO refused: {exc.code}: {exc.message}", retriable=retriable
        )
    if isinstance(exc, ServerError):
        return ObjectStoreError(
            f"{what}: MinIO server error (HTTP {exc.status_code})",
            retriable=exc.status_code >= 500,
        )
    if isinstance(exc, InvalidResponseError):
        return ObjectStoreError(f"{what}: not an S3 answer from {endpoint}", retriable=True)
    if isinstance(exc, Urllib3Error):
        return ObjectStoreError(
            f"{what}: MinIO at {endpoint} {_describe_http(exc)}", retriable=True
        )
    if isinstance(exc, ConnectionError | TimeoutError):
        return ObjectStoreError(f"{what}: MinIO at {endpoint}: {exc}", retriable=True)
    if isinstance(exc, OSError):
        # Local files: reading the model or writing the download.
        detail = exc.strerror or str(exc)
        where = f" {exc.filename}" if exc.filename else ""
        return ModelStoreError(f"{what}:{where} {detail}")
    return None


class _HashingReader:
    """File reader hashing exactly the bytes minio sends, so the manifest matches them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        self.count += len(data)
        return data


# --- the store ------------------------------------------------------------------------


class ModelStore(Lifecycle):
    """Upload, list, download and delete SavedModel versions in one MinIO/S3 bucket.

    See the module docstring for the layout and the visibility rule (a version exists
    once its manifest does). ``start`` creates the bucket if it does not exist.

    ``endpoint`` is ``host:port``; ``part_size`` (5 MiB to 5 GiB) is the multipart part
    size and the threshold above which a file goes up in parts; ``timeout_s`` bounds
    connecting (at most 10 s) and each read; ``retries`` is how often one HTTP request
    is retried (connection errors, 5xx) before ObjectStoreError.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        bucket: str,
        secure: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        timeout_s: float = 30.0,
        retries: int = 2,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigurationError(
                f"part_size must be between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} bytes"
            )
        if timeout_s <= 0:
            raise ConfigurationError("timeout_s must be positive")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid bucket name {bucket!r}: S3 wants 3-63 lowercase letters, digits,"
                " dots and hyphens"
            ) from exc
        self._endpoint = endpoint
        self._access_key = access_key
        self._secret_key = secret_key
        self._secure = secure
        self._bucket = bucket
        self._part_size = part_size
        self._timeout_s = timeout_s
        self._retries = retries
        self._http: urllib3.PoolManager | None = None
        self._client: Minio | None = None

    @property
    def bucket(self) -> str:
        """The bucket holding ``models/``."""
        return self._bucket

    @property
    def part_size(self) -> int:
        """Files larger than this are uploaded in parts of this size."""
        return self._part_size

    # lifecycle

    async def start(self) -> None:
        """Connect and create the bucket if missing; raises ObjectStoreError."""
        if self._client is not None:
            return
        http = urllib3.PoolManager(
            timeout=Timeout(connect=min(self._timeout_s, 10.0), read=self._timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # Few quick retries: a dead endpoint should fail in about a second, and the
            # caller decides on longer retries from ObjectStoreError.retriable.
            retries=Retry(
                total=self._retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        try:
            client = Minio(
                self._endpoint,
                access_key=self._access_key,
                secret_key=self._secret_key,
                secure=self._secure,
                http_client=http,
            )
        except ValueError as exc:
            http.clear()
            raise ConfigurationError(
                f"invalid MinIO endpoint {self._endpoint!r} (expected host:port): {exc}"
            ) from exc
        self._http, self._client = http, client
        try:
            await self._ensure_bucket()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the connection pool; safe to call twice."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            http.clear()

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` was not called since."""
        return self._client is not None

    def _require(self) -> Minio:
        if self._client is None:
            raise MulambdaError("model store is not started")
        return self._client

    async def _run(self, what: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking minio/file call in a thread, translating its errors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except MulambdaError:
            raise
        except Exception as exc:
            translated = _translate(exc, what, self._endpoint)
            if translated is None:
                raise
            raise translated from exc

    async def _ensure_bucket(self) -> None:
        client = self._require()

        def ensure() -> None:
            if client.bucket_exists(self._bucket):
                return
            try:
                client.make_bucket(self._bucket)
            except S3Error as exc:
                # Another process created it between our check and our request.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        await self._run(f"bucket {self._bucket}", ensure)

    # listing

    async def _keys(self, prefix: str) -> list[str]:
        client = self._require()

        def listing() -> list[str]:
            objects = client.list_objects(self._bucket, prefix=prefix, recursive=True)
            return [o.object_name for o in objects if o.object_name is not None]

        return await self._run(f"list {prefix}", listing)

    async def list_models(self) -> dict[str, list[int]]:
        """Every model with its visible versions, ascending."""
        return visible_versions(await self._keys(f"{KEY_ROOT}/"))

    async def list_versions(self, name: str) -> list[int]:
        """Visible versions of one model, ascending (empty if none)."""
        prefix = model_prefix(name)
        return visible_versions(await self._keys(prefix)).get(name, [])

    async def get_manifest(self, name: str, version: int | None = None) -> Manifest:
        """The manifest of a visible version (default: the latest)."""
        version = await self._resolve_version(name, version)
        key = manifest_key(name, version)
        client = self._require()

        def fetch() -> bytes | None:
            try:
                response = client.get_object(self._bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return None
                raise
            try:
                # A manifest is small; bound the read so a bogus object cannot flood memory.
                return response.read(64 * 1024 * 1024)
            finally:
                response.close()
                response.release_conn()

        data = await self._run(f"read manifest of {name} version {version}", fetch)
        if data is None:
            raise ModelStoreError(f"model {name} has no version {version}")
        return parse_manifest(data, name=name, version=version)

    async def _resolve_version(self, name: str, version: int | None) -> int:
        check_model_name(name)
        if version is not None:
            return check_version(version)
        versions = await self.list_versions(name)
        if not versions:
            raise ModelStoreError(f"no model named {name} in bucket {self._bucket}")
        return versions[-1]

    # upload

    async def upload(
        self,
        path: str | os.PathLike[str],
        name: str,
        version: int | None = None,
        *,
        force: bool = False,
    ) -> Manifest:
        """Upload a SavedModel directory as ``name`` / ``version`` and return its manifest.

        ``version`` defaults to the highest visible version + 1. An existing version is
        refused unless ``force``; then its manifest is removed first and objects the new
        upload does not rewrite are deleted before the new manifest is written.
        """
        check_model_name(name)
        if version is not None:
            check_version(version)
        model = await self._run(f"read {path}", scan_saved_model, path)
        existing_keys = await self._keys(model_prefix(name))
        existing = visible_versions(existing_keys).get(name, [])
        if version is None:
            version = next_version(existing)
        if version in existing:
            if not force:
                raise ModelStoreError(
                    f"model {name} version {version} already exists (force to replace it)"
                )
            # From here the old version is invisible: never a mix of old and new files.
            await self._remove([manifest_key(name, version)])
        prefix = version_prefix(name, version)
        keys = {f.rel: object_key(name, version, f.rel) for f in model.files}
        log.info(
            "uploading model",
            extra={
                "model": name,
                "version": version,
                "files": len(model.files),
                "bytes": model.total_size,
            },
        )
        entries = [await self._put_file(f, keys[f.rel]) for f in upload_order(model.files)]
        manifest = build_manifest(
            name, version, entries, directories=model.directories, uploaded_at=datetime.now(UTC)
        )
        leftovers = [k for k in existing_keys if k.startswith(prefix)]
        await self._remove(stale_keys(leftovers, {*keys.values(), manifest_key(name, version)}))
        await self._put_bytes(manifest_key(name, version), manifest.to_json())
        return manifest

    async def _put_file(self, local: LocalFile, key: str) -> ManifestFile:
        client = self._require()
        part_size = effective_part_size(local.size, self._part_size)

        def put() -> ManifestFile:
            with open(local.path, "rb") as raw:
                reader = _HashingReader(raw)
                client.put_object(
                    self._bucket,
                    key,
                    cast(BinaryIO, reader),
                    local.size,
                    part_size=part_size,
                )
                grown = os.fstat(raw.fileno()).st_size != local.size
            if reader.count != local.size or grown:
                raise ModelStoreError(f"{local.path}: file changed while uploading")
            return ManifestFile(path=local.rel, size=local.size, sha256=reader.sha256.hexdigest())

        return await self._run(f"upload {local.rel}", put)

    async def _put_bytes(self, key: str, data: bytes) -> None:
        client = self._require()
        await self._run(
            f"write {key}",
            client.put_object,
            self._bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type="application/json",
        )

    async def _remove(self, keys: Iterable[str]) -> None:
        todo = list(keys)
        if not todo:
            return
        client = self._require()

        def remove() -> list[str]:
            errors = client.remove_objects(self._bucket, [DeleteObject(k) for k in todo])
            return [f"{e.name}: {e.code}" for e in errors]

        failed = await self._run(f"delete {len(todo)} objects", remove)
        if failed:
            raise ObjectStoreError(f"delete failed for {len(failed)} objects: {failed[0]}")

    # download

    async def download(
        self,
        name: str,
        version: int | None = None,
        *,
        dest_dir: str | os.PathLike[str],
        overwrite: bool = False,
    ) -> Manifest:
        """Download a visible version (default: the latest) as the directory ``dest_dir``.

        Every file is checked against the manifest's size and sha256 (ModelStoreError on
        a mismatch). Files land in a temporary sibling renamed to ``dest_dir`` at the end,
        so ``dest_dir`` appears complete or not at all. An existing non-empty
        ``dest_dir`` is refused unless ``overwrite``.
        """
        manifest = await self.get_manifest(name, version)
        dest = Path(dest_dir)
        tmp = await self._run(f"prepare {dest}", _prepare_destination, dest, overwrite)
        try:
            await self._run(f"prepare {dest}", _make_dirs, tmp, manifest)
            for entry in manifest.files:
                target = tmp / entry.path
                await self._get_file(
                    object_key(manifest.name, manifest.version, entry.path), target, entry
                )
            await self._run(f"move into {dest}", _replace_dir, tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    async def _get_file(self, key: str, target: Path, entry: ManifestFile) -> None:
        client = self._require()

        def get() -> str | None:
            try:
                response = client.get_object(self._bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return "object missing"
                raise
            digest = hashlib.sha256()
            count = 0
            try:
                with open(target, "wb") as out:
                    for chunk in response.stream(_CHUNK):
                        count += len(chunk)
                        if count > entry.size:
                            # Stop early: a bogus object must not fill the disk.
                            return f"larger than the manifest's {entry.size} bytes"
                        digest.update(chunk)
                        out.write(chunk)
            finally:
                response.close()
                response.release_conn()
            if count != entry.size:
                return f"{count} bytes, manifest says {entry.size}"
            if digest.hexdigest() != entry.sha256:
                return f"sha256 {digest.hexdigest()} does not match the manifest's {entry.sha256}"
            return None

        problem = await self._run(f"download {key}", get)
        if problem is not None:
            raise ModelStoreError(f"{key}: corrupt or incomplete version: {problem}")

    # delete

    async def delete(self, name: str, version: int) -> int:
        """Delete a version (manifest first); returns how many objects were removed.

        Also removes the leftovers of an interrupted upload (objects without manifest).
        """
        prefix = version_prefix(name, version)
        keys = await self._keys(prefix)
        if not keys:
            raise ModelStoreError(f"model {name} has no version {version}")
        mkey = manifest_key(name, version)
        # Manifest first (the version disappears), then saved_model.pb, then the rest.
        first = [k for k in keys if k == mkey]
        model_files = {object_key(name, version, f) for f in SAVED_MODEL_FILES}
        second = [k for k in keys if k in model_files]
        rest = [k for k in keys if k != mkey and k not in model_files]
        for batch in (first, second, rest):
            await self._remove(batch)
        return len(keys)


def _prepare_destination(dest: Path, overwrite: bool) -> Path:
    """Check ``dest`` may be written; return the temporary sibling to download into."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ModelStoreError(f"{dest}: exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise ModelStoreError(f"{dest}: directory exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))


def _make_dirs(tmp: Path, manifest: Manifest) -> None:
    for rel in manifest.directories:
        (tmp / rel).mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        (tmp / entry.path).parent.mkdir(parents=True, exist_ok=True)


def _replace_dir(tmp: Path, dest: Path) -> None:
    # mkdtemp makes 0700 directories; TF Serving may run as another user.
    for directory, _, _ in os.walk(tmp):
        os.chmod(directory, 0o755)  # noqa: S103 - model files are not secret on disk
    if not dest.exists():
        os.rename(tmp, dest)
        return
    aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.rename(dest, aside / "old")
    try:
        os.rename(tmp, dest)
    except OSError:
        os.rename(aside / "old", dest)
        raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(aside)
