"""The manifest of a stored model version: its commit point and checksum list.

``models/{name}/{version}/.mulambda-manifest.json`` lists every file of the version with
its size and sha256 (and every directory, so empty ones survive a round trip). It is
written last on upload and removed first on delete, so it decides whether a version
exists (see :mod:`mulambda.models.layout`). Pure: building, encoding and parsing only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from mulambda.errors import ModelStoreError
from mulambda.models.layout import (
    MAX_KEY_BYTES,
    MAX_VERSION,
    check_layout,
    check_model_name,
    safe_relpath,
)

__all__ = ["Manifest", "ManifestFile", "build_manifest", "parse_manifest"]


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
