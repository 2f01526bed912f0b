"""Desired state of the launcher: the latest launch request per launch id.

Pure: folded from the compacted executor-registrations topic (record by record, in
offset order) with no I/O. A registration carrying a :class:`LaunchSpec` is a launch
request under its ``executor_id`` (the launch id); a tombstone, or a registration without
a spec under the same id, withdraws it. Every other record (the replicas' own
registrations, ``<launch id>-<ordinal>``, and plain executors) is none of the launcher's
business.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mulambda.errors import ConfigurationError, LaunchError
from mulambda.protocols.tfserving import model_path
from mulambda.wire.events import ExecutorProtocol, ExecutorRegistration, Identifier, LaunchSpec

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)

_ENVELOPE = {"schema_version", "message_id", "timestamp"}


def replica_id(launch_id: str, ordinal: int) -> str:
    """Executor id the replica ``ordinal`` of launch ``launch_id`` registers."""
    return f"{launch_id}-{ordinal}"


def spec_hash(document: Any) -> str:
    """Short stable digest of a JSON-able document: equal documents, equal hashes."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def launch_hash(launch: ExecutorRegistration) -> str:
    """Digest of what a launch asks for (not of the envelope a republication changes)."""
    return spec_hash(launch.model_dump(mode="json", exclude=_ENVELOPE))


def check_launch(launch: ExecutorRegistration) -> LaunchSpec:
    """The spec of a launch request the launcher can carry out; LaunchError why not."""
    spec = launch.launch
    if spec is None:
        raise LaunchError(f"{launch.executor_id} carries no launch spec")
    if launch.protocol is not ExecutorProtocol.TFSERVING_REST:
        raise LaunchError(
            f"launch {launch.executor_id}: the launcher runs TF Serving executors only,"
            f" not {launch.protocol.value}"
        )
    try:
        model_path(launch.model_name, version=launch.model_version)
    except ConfigurationError as exc:
        raise LaunchError(f"launch {launch.executor_id}: {exc.reason}") from exc
    last = replica_id(launch.executor_id, spec.replicas - 1)
    try:
        _IDENTIFIER.validate_python(last)
    except ValidationError:
        raise LaunchError(
            f"launch {launch.executor_id}: replica id {last!r} is not a valid executor id"
            " (at most 200 characters)"
        ) from None
    return spec


class LaunchBook:
    """The launch requests in force, by launch id, and which records are superseded.

    ``note`` is fed during the start-up replay: it remembers the latest offset per key,
    so a group consumer re-reading records from before the replay's end handles only the
    latest record of each key (an older one would briefly revert the desired state).
    """

    def __init__(self) -> None:
        self._launches: dict[str, ExecutorRegistration] = {}
        self._latest: dict[tuple[int, str], int] = {}
        self._ends: dict[int, int] = {}

    @property
    def launches(self) -> Mapping[str, ExecutorRegistration]:
        """Launch requests in force, by launch id (read-only view)."""
        return self._launches

    def apply(self, key: str, value: ExecutorRegistration | None) -> bool:
        """Fold one record in; True when it is about a launch (made, changed, withdrawn)."""
        if value is not None and value.launch is not None:
            if value.executor_id != key:
                raise LaunchError(
                    f"launch request keyed {key!r} names launch id {value.executor_id!r}"
                )
            other = self._collision(key)
            if other is not None:
                # wine-0 is a replica of launch wine: its companion's tombstone would
                # withdraw a launch of that id, and the launch would retire the replica.
                raise LaunchError(
                    f"launch {key!r} collides with launch {other!r}: one's id is a replica id"
                    " of the other (<launch id>-<ordinal>)"
                )
            self._launches[key] = value
            return True
        return self._launches.pop(key, None) is not None

    def _collision(self, launch_id: str) -> str | None:
        for other in self._launches:
            for replica, launch in ((launch_id, other), (other, launch_id)):
                ordinal = replica.removeprefix(f"{launch}-")
                if other != launch_id and ordinal != replica and ordinal.isdigit():
                    return other
        return None

    def replayed(self, partition: int, offset: int) -> bool:
        """Whether a record lies before the start-up replay's end (already reconciled)."""
        return offset < self._ends.get(partition, 0)

    def note(self, partition: int, offset: int, key: str | None) -> None:
        """Remember a replayed record's position (see the class docstring)."""
        self._ends[partition] = max(self._ends.get(partition, 0), offset + 1)
        if key is not None:
            self._latest[(partition, key)] = offset

    def superseded(self, partition: int, offset: int, key: str | None) -> bool:
        """Whether a record before the replay's end has a later one with its key."""
        if offset >= self._ends.get(partition, 0) or key is None:
            return False
        return self._latest.get((partition, key), offset) != offset
