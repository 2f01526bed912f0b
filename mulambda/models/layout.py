"""Where a model version lives in the bucket, as pure rules TensorFlow Serving's layout needs.

A model version is a SavedModel directory stored under ``models/{name}/{version}/``::

    models/wine/3/saved_model.pb
    models/wine/3/variables/variables.index
    models/wine/3/variables/variables.data-00000-of-00001
    models/wine/3/.mulambda-manifest.json      <- written last: the commit point

**A version exists (is listed, downloadable, counted when picking the next version
number) only once its manifest exists** (:func:`visible_versions`). The manifest itself
is in :mod:`mulambda.models.manifest`; uploading, downloading and deleting in
:mod:`mulambda.models.store`.

This module holds names and versions (:func:`check_model_name`, :func:`check_version`),
object keys (:func:`object_key`, :func:`parse_key`, ...), S3's size limits
(:func:`effective_part_size`) and the local SavedModel directory (:func:`scan_saved_model`,
:func:`check_layout`, :func:`upload_order`: ``saved_model.pb`` goes up last, so a TF
Serving polling the bucket never loads a version whose variables are still missing). No
network; only :func:`scan_saved_model` reads the local disk.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from mulambda.errors import ModelStoreError

__all__ = [
    "DEFAULT_PART_SIZE",
    "KEY_ROOT",
    "MANIFEST_NAME",
    "MAX_KEY_BYTES",
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MAX_VERSION",
    "MIN_PART_SIZE",
    "MLSERVER_SETTINGS_FILE",
    "SAVED_MODEL_FILES",
    "LocalFile",
    "LocalModel",
    "check_layout",
    "check_model_name",
    "check_version",
    "effective_part_size",
    "manifest_key",
    "model_prefix",
    "next_version",
    "object_key",
    "parse_key",
    "safe_relpath",
    "scan_saved_model",
    "stale_keys",
    "upload_order",
    "version_prefix",
    "visible_versions",
]

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

MLSERVER_SETTINGS_FILE: Final = "model-settings.json"
"""An MLServer model folder (scikit-learn, XGBoost... served over OIP v2) holds this at its
top; MLServer loads a folder once it appears, so like saved_model.pb it goes up last."""

_MODEL_MARKERS: Final = (*SAVED_MODEL_FILES, MLSERVER_SETTINGS_FILE)

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
"""``events.Identifier`` without ``/``: a name is one key segment."""

_NAME_MAX: Final = 200

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

    Needs ``saved_model.pb`` or ``saved_model.pbtxt`` at the top (or, for an MLServer
    model folder, ``model-settings.json``); ``variables`` and ``assets`` must be
    directories if present; the manifest name is reserved.
    """
    for rel in (*files, *directories):
        safe_relpath(rel)
    if not any(name in files for name in _MODEL_MARKERS):
        raise ModelStoreError(
            "not a SavedModel directory (nor an MLServer model folder): no saved_model.pb, "
            "saved_model.pbtxt or model-settings.json at its top"
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
    """Files in upload order: by path, with saved_model.pb(txt) / model-settings.json last."""
    return sorted(files, key=lambda f: (f.rel in _MODEL_MARKERS, f.rel))
