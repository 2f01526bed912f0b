"""Saved models on MinIO/S3, in the layout TensorFlow Serving reads.

A model version is a SavedModel directory stored under ``models/{name}/{version}/``::

    models/wine/3/saved_model.pb
    models/wine/3/variables/variables.index
    models/wine/3/variables/variables.data-00000-of-00001
    models/wine/3/.mulambda-manifest.json      <- written last: the commit point

The manifest lists every file with its size and sha256. **A version exists (is listed,
downloadable, counted when picking the next version number) only once its manifest
exists.** Uploads write every file first and the manifest last, so an interrupted upload
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
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Final, Literal, ParamSpec, TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util import Retry, Timeout

from mulambda.errors import ConfigurationError, ModelStoreError, MulambdaError, ObjectStoreError
from mulambda.runtime.lifecycle import Lifecycle

__all__ = [
    "DEFAULT_PART_SIZE",
    "KEY_ROOT",
    "MANIFEST_NAME",
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_VERSION",
    "MIN_PART_SIZE",
    "LocalFile",
    "LocalModel",
    "Manifest",
    "ManifestFile",
    "ModelStore",
    "build_manifest",
    "check_layout",
    "check_model_name",
    "check_version",
    "effective_part_size",
    "manifest_key",
    "model_prefix",
    "next_version",
    "object_key",
    "parse_key",
    "parse_manifest",
    "safe_relpath",
    "scan_saved_model",
    "stale_keys",
    "upload_order",
    "version_prefix",
    "visible_versions",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

KEY_ROOT: Final = "models"
"""Every model object lives under ``models/`` in the bucket."""

MANIFEST_NAME: Final = ".mulambda-manifest.json"
"""Name of the manifest object inside a version; reserved (refused in uploaded trees)."""

MIN_PART_SIZE: Final = 5 * 1024 * 1024
"""S3's (and MinIO's) smallest multipart part, except the last."""

MAX_PART_SIZE: Final = 5 * 1024 * 1024 * 1024
"""S3's largest part."""

MAX_PARTS: Final = 10_000
"""S3's most parts per object."""

MAX_OBJECT_SIZE: Final = 5 * 1024**4
"""S3's largest object (5 TiB)."""

DEFAULT_PART_SIZE: Final = 16 * 1024 * 1024
"""Files above this go up in parts of this size."""

MAX_VERSION: Final = 2**63 - 1
"""TF Serving versions are int64."""

MAX_KEY_BYTES: Final = 1024
"""S3's bound on an object key."""

SAVED_MODEL_FILES: Final = ("saved_model.pb", "saved_model.pbtxt")
"""A SavedModel directory holds one of these at its top."""

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
"""``events.Identifier`` without ``/``: a name is one key segment."""

_NAME_MAX: Final = 200

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


# --- names, keys and versions (pure) --------------------------------------------------


def check_model_name(name: str) -> str:
    """Return ``name`` if it can name a stored model, else raise ModelStoreError."""
    if not isinstance(name, str) or not name:
        raise ModelStoreError("model name must not be empty")
    if len(name) > _NAME_MAX or not _NAME_RE.match(name):
        raise ModelStoreError(
            f"invalid model name {name!r}: 1-{_NAME_MAX} characters of A-Z a-z 0-9 . _ : @ -,"
            " starting with a letter or digit"
        )
    return name


def check_version(version: int) -> int:
    """Return ``version`` if it is a valid model version (1..2**63-1)."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelStoreError(f"model version must be an integer, not {version!r}")
    if not 1 <= version <= MAX_VERSION:
        raise ModelStoreError(f"model version must be a positive integer, not {version}")
    return version


def model_prefix(name: str) -> str:
    """Key prefix of every version of a model (with trailing slash)."""
    return f"{KEY_ROOT}/{check_model_name(name)}/"


def version_prefix(name: str, version: int) -> str:
    """Key prefix of one version (with trailing slash, so 1/ never matches 10/)."""
    return f"{model_prefix(name)}{check_version(version)}/"


def object_key(name: str, version: int, rel: str) -> str:
    """Key of the file ``rel`` (a relative POSIX path) of a model version."""
    key = version_prefix(name, version) + safe_relpath(rel)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ModelStoreError(f"{rel}: object key longer than {MAX_KEY_BYTES} bytes")
    return key


def manifest_key(name: str, version: int) -> str:
    """Key of a version's manifest."""
    return version_prefix(name, version) + MANIFEST_NAME


def parse_key(key: str) -> tuple[str, int, str] | None:
    """``(name, version, relative path)`` of a model object key, or None if it is not one."""
    parts = key.split("/", 3)
    if len(parts) != 4 or parts[0] != KEY_ROOT or not parts[3]:
        return None
    _, name, version_text, rel = parts
    if not _NAME_RE.match(name) or len(name) > _NAME_MAX:
        return None
    # Only canonical decimal versions: "007" or "+7" are not versions we wrote.
    if not version_text.isdecimal() or version_text != str(int(version_text)):
        return None
    version = int(version_text)
    if not 1 <= version <= MAX_VERSION:
        return None
    return name, version, rel


def visible_versions(keys: Iterable[str]) -> dict[str, list[int]]:
    """Visible versions per model name (those with a manifest), sorted ascending."""
    found: dict[str, set[int]] = {}
    for key in keys:
        parsed = parse_key(key)
        if parsed is not None and parsed[2] == MANIFEST_NAME:
            found.setdefault(parsed[0], set()).add(parsed[1])
    return {name: sorted(found[name]) for name in sorted(found)}


def next_version(existing: Iterable[int]) -> int:
    """The default version of a new upload: one above the highest visible version."""
    highest = max(existing, default=0)
    if highest >= MAX_VERSION:
        raise ModelStoreError(f"no version left above {highest}")
    return highest + 1


def stale_keys(existing: Iterable[str], keep: Collection[str]) -> list[str]:
    """Keys under a version prefix that a new upload does not rewrite (to be removed)."""
    return sorted(set(existing) - set(keep))


def effective_part_size(size: int, part_size: int) -> int:
    """``part_size``, grown (in whole MiB) when a file would need more than 10000 parts."""
    if size > MAX_OBJECT_SIZE:
        raise ModelStoreError(f"file of {size} bytes is larger than S3 allows (5 TiB)")
    if size <= part_size * MAX_PARTS:
        return part_size
    mib = 1024 * 1024
    needed = math.ceil(math.ceil(size / MAX_PARTS) / mib) * mib
    return min(needed, MAX_PART_SIZE)


def safe_relpath(rel: str) -> str:
    """Return ``rel`` if it is a clean relative POSIX path staying inside its directory."""
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise ModelStoreError(f"unsafe path in model: {rel!r}")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ModelStoreError(f"unsafe path in model: {rel!r}")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ModelStoreError(f"path is not valid UTF-8: {rel!r}") from exc
    return rel


# --- the local SavedModel directory ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One regular file of a SavedModel directory to upload."""

    rel: str
    """POSIX path relative to the SavedModel directory."""
    path: Path
    """Where to read it (a symlink's resolved target)."""
    size: int


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A SavedModel directory that passed :func:`check_layout`."""

    root: Path
    files: tuple[LocalFile, ...]
    directories: tuple[str, ...]
    """Every sub-directory (relative POSIX path), so empty ones survive a round trip."""

    @property
    def total_size(self) -> int:
        """Bytes in all files."""
        return sum(f.size for f in self.files)


def check_layout(files: Collection[str], directories: Collection[str]) -> None:
    """Refuse a tree of relative paths that is not a TF SavedModel directory.

    Needs ``saved_model.pb`` or ``saved_model.pbtxt`` at the top; ``variables`` and
    ``assets`` must be directories if present; the manifest name is reserved.
    """
    for rel in (*files, *directories):
        safe_relpath(rel)
    if not any(name in files for name in SAVED_MODEL_FILES):
        raise ModelStoreError(
            "not a SavedModel directory: no saved_model.pb or saved_model.pbtxt at its top"
        )
    for sub in ("variables", "assets"):
        if sub in files:
            raise ModelStoreError(f"not a SavedModel directory: {sub} is a file, not a directory")
    for rel in files:
        if PurePosixPath(rel).name == MANIFEST_NAME:
            raise ModelStoreError(f"{rel}: {MANIFEST_NAME} is reserved for the store's manifest")


def scan_saved_model(path: str | os.PathLike[str]) -> LocalModel:
    """Walk a SavedModel directory: regular files and directories, symlinks resolved.

    Symlinks are followed when they point inside the directory, and refused when they
    point outside it, dangle, or loop. Sockets, FIFOs and devices are refused (reading
    a FIFO would hang). Raises ModelStoreError with a one-line reason.
    """
    root = Path(path)
    if not root.exists():
        raise ModelStoreError(f"{root}: no such directory")
    if not root.is_dir():
        raise ModelStoreError(f"{root}: not a directory (a SavedModel is a directory)")
    real_root = root.resolve()
    files: list[LocalFile] = []
    directories: list[str] = []

    def walk(real_dir: Path, rel_dir: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError as exc:
            raise ModelStoreError(f"{root / rel_dir}: cannot list ({exc.strerror})") from exc
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            shown = root / rel
            target = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = target.resolve(strict=True)
                except (OSError, RuntimeError) as exc:
                    raise ModelStoreError(f"{shown}: broken or looping symlink") from exc
                if not target.is_relative_to(real_root):
                    raise ModelStoreError(
                        f"{shown}: symlink points outside the model directory ({target})"
                    )
            try:
                st = target.stat()
            except OSError as exc:
                raise ModelStoreError(f"{shown}: cannot stat ({exc.strerror})") from exc
            if target.is_dir():
                if target in ancestors:
                    raise ModelStoreError(f"{shown}: symlink loop")
                directories.append(rel)
                walk(target, rel, ancestors | {target})
            elif target.is_file():
                files.append(LocalFile(rel=rel, path=target, size=st.st_size))
            else:
                raise ModelStoreError(f"{shown}: not a regular file or directory")

    walk(real_root, "", frozenset({real_root}))
    check_layout({f.rel for f in files}, directories)
    return LocalModel(root=root, files=tuple(files), directories=tuple(directories))


def upload_order(files: Iterable[LocalFile]) -> list[LocalFile]:
    """Files in upload order: by path, with saved_model.pb(txt) last."""
    return sorted(files, key=lambda f: (f.rel in SAVED_MODEL_FILES, f.rel))


# --- the manifest ---------------------------------------------------------------------


class ManifestFile(BaseModel):
    """One file of a stored version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1, max_length=MAX_KEY_BYTES)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _safe(cls, value: str) -> str:
        try:
            return safe_relpath(value)
        except ModelStoreError as exc:
            raise ValueError(exc.reason) from exc


class Manifest(BaseModel):
    """What ``models/{name}/{version}/.mulambda-manifest.json`` holds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal[1] = 1
    name: str
    version: int = Field(ge=1, le=MAX_VERSION)
    uploaded_at: AwareDatetime
    files: tuple[ManifestFile, ...]
    directories: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_model_name(value)
        except ModelStoreError as exc:
            raise ValueError(exc.reason) from exc

    @field_validator("files")
    @classmethod
    def _layout(cls, value: tuple[ManifestFile, ...]) -> tuple[ManifestFile, ...]:
        paths = [f.path for f in value]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file paths")
        try:
            check_layout(set(paths), ())
        except ModelStoreError as exc:
            raise ValueError(exc.reason) from exc
        return value

    @field_validator("directories")
    @classmethod
    def _dirs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            for rel in value:
                safe_relpath(rel)
        except ModelStoreError as exc:
            raise ValueError(exc.reason) from exc
        return value

    @property
    def total_size(self) -> int:
        """Bytes in all files."""
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        """The manifest object's body."""
        return self.model_dump_json(indent=2).encode("utf-8")


def build_manifest(
    name: str,
    version: int,
    files: Iterable[ManifestFile],
    *,
    directories: Iterable[str] = (),
    uploaded_at: datetime,
) -> Manifest:
    """The manifest of an upload, files and directories sorted by path."""
    try:
        return Manifest(
            name=name,
            version=version,
            uploaded_at=uploaded_at,
            files=tuple(sorted(files, key=lambda f: f.path)),
            directories=tuple(sorted(directories)),
        )
    except ValidationError as exc:
        raise ModelStoreError(f"invalid manifest: {_first_error(exc)}") from exc


def parse_manifest(data: bytes, *, name: str, version: int) -> Manifest:
    """Decode a stored manifest and check it belongs to ``name`` / ``version``."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise ModelStoreError(
            f"manifest of {name} version {version} is invalid: {_first_error(exc)}"
        ) from exc
    if (manifest.name, manifest.version) != (name, version):
        raise ModelStoreError(
            f"manifest at {name} version {version} describes "
            f"{manifest.name} version {manifest.version}"
        )
    return manifest


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


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
