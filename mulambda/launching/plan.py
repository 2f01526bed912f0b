"""What the launcher must do: desired objects against observed ones, as actions.

Pure. A backend renders each launch request into :class:`DesiredObject` s (Kubernetes
workloads and Services, or local replica processes), reports what it runs as
:class:`ObservedObject` s, and :func:`plan` decides: create what is missing, update what
differs (by ``spec_hash``), delete what the launcher owns but nobody asks for any more.
An observed object without the launcher's ownership mark (``managed`` False) is never
updated or deleted: a desired object of the same name is a conflict instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from mulambda.wire.events import LaunchAction

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
"""Label marking what the launcher owns (the Kubernetes convention)."""

MANAGER: Final = "mulambda-launcher"
"""Value of :data:`MANAGED_BY_LABEL` on the launcher's objects; also its field manager."""

LAUNCH_LABEL: Final = "mulambda.dev/launch"
"""Label with the DNS-safe form of the launch id (for selecting one launch's objects)."""

LAUNCH_ID_ANNOTATION: Final = "mulambda.dev/launch-id"
"""Annotation with the exact launch id (ids may hold characters labels cannot)."""

SPEC_HASH_ANNOTATION: Final = "mulambda.dev/spec-hash"
"""Annotation with the digest of the desired object the launcher last applied."""


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """One object a backend runs: its kind (``StatefulSet``, ``replica``...) and name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class DesiredObject:
    """An object a launch request needs, as the backend will apply it."""

    ref: ObjectRef
    launch_id: str
    spec_hash: str
    body: Any = field(compare=False)
    """What the backend applies (a manifest, a replica's plan)."""


@dataclass(frozen=True, slots=True)
class ObservedObject:
    """An object the backend found; ``managed`` only with the launcher's ownership mark."""

    ref: ObjectRef
    launch_id: str | None
    spec_hash: str | None
    managed: bool = True


class Verb(StrEnum):
    """What to do to one object."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Action:
    """One step of a plan."""

    verb: Verb
    ref: ObjectRef
    launch_id: str
    desired: DesiredObject | None = None
    """The object to apply (create, update); None for a delete."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Actions in order (creates and updates first, so replacements are up before the old
    ones go), and the desired objects that collide with objects the launcher does not own."""

    actions: tuple[Action, ...]
    conflicts: tuple[DesiredObject, ...] = ()

    def of(self, launch_id: str) -> list[Action]:
        """The actions about one launch."""
        return [a for a in self.actions if a.launch_id == launch_id]


def plan(
    desired: Iterable[DesiredObject],
    observed: Iterable[ObservedObject],
    *,
    scope: Iterable[str] | None = None,
) -> Plan:
    """The actions that turn ``observed`` into ``desired``.

    With ``scope`` (launch ids), only objects of those launches are considered: reconciling
    one launch never deletes another's objects, even when ``desired`` lists only its own.
    """
    wanted = set(scope) if scope is not None else None
    found: dict[ObjectRef, ObservedObject] = {}
    for seen in observed:
        found[seen.ref] = seen
    applies: list[Action] = []
    conflicts: list[DesiredObject] = []
    needed: set[ObjectRef] = set()
    for obj in sorted(desired, key=lambda d: d.ref):
        if wanted is not None and obj.launch_id not in wanted:
            continue
        needed.add(obj.ref)
        have = found.get(obj.ref)
        if have is None:
            applies.append(Action(Verb.CREATE, obj.ref, obj.launch_id, obj))
        elif not have.managed or (have.launch_id not in (None, obj.launch_id)):
            # Not ours, or another launch's: the same name cannot serve both.
            conflicts.append(obj)
        elif have.spec_hash != obj.spec_hash:
            applies.append(Action(Verb.UPDATE, obj.ref, obj.launch_id, obj))
    deletes = [
        Action(Verb.DELETE, ref, seen.launch_id or "")
        for ref, seen in sorted(found.items())
        if seen.managed
        and ref not in needed
        and (wanted is None or seen.launch_id in wanted)
        and not any(c.ref == ref for c in conflicts)
    ]
    return Plan(tuple(applies + deletes), tuple(conflicts))


def outcome(actions: Sequence[Action], *, withdrawn: bool, existed: bool) -> LaunchAction:
    """What a launch's actions amount to, for its status event; ``existed``: some object
    of the launch was there before (a new replica of a running launch is an update)."""
    if withdrawn:
        return LaunchAction.DELETED
    if not actions:
        return LaunchAction.UNCHANGED
    if not existed and all(a.verb is Verb.CREATE for a in actions):
        return LaunchAction.CREATED
    return LaunchAction.UPDATED


def describe(actions: Sequence[Action]) -> str:
    """One line naming each action, e.g. ``create StatefulSet/x, delete Service/y``."""
    return ", ".join(f"{a.verb.value} {a.ref}" for a in actions) or "nothing to do"
