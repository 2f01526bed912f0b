"""The Kubernetes backend's objects and API requests, as data (pure).

Each launch is a StatefulSet (pods register ``<launch id>-<ordinal>``, from the
``apps.kubernetes.io/pod-index`` label, even for one replica, so scaling renames nothing)
and the headless Service it names, built by :mod:`mulambda.launching.manifests` and marked
as the launcher's: the label ``app.kubernetes.io/managed-by: mulambda-launcher``, the
launch's label, and annotations with the exact launch id and the digest of the manifest.
Requests: server-side apply (``PATCH`` as ``application/apply-patch+yaml`` with field
manager ``mulambda-launcher``), a ``GET`` before creating (a foreign object of that name
is left alone), lists by the ownership label only, and deletes preconditioned on the uid
listed (an object re-created meanwhile by someone else is not deleted).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Final

from mulambda.errors import LaunchError, LaunchForbidden, MulambdaError, TransportError
from mulambda.launching.desired import check_launch, spec_hash
from mulambda.launching.manifests import (
    LaunchOptions,
    executor_deployment,
    executor_service,
    workload_name,
)
from mulambda.launching.plan import (
    LAUNCH_ID_ANNOTATION,
    LAUNCH_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    SPEC_HASH_ANNOTATION,
    DesiredObject,
    ObjectRef,
    ObservedObject,
)
from mulambda.wire.events import ExecutorRegistration

APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"
"""Content type of a server-side apply patch (JSON is YAML)."""

OWNED_SELECTOR: Final = f"{MANAGED_BY_LABEL}={MANAGER}"
"""Label selector of everything the launcher owns."""

_COLLECTIONS: Final = {
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
}
"""Kind → (API group path, resource) of the kinds the launcher manages."""

MANAGED_KINDS: Final = tuple(_COLLECTIONS)
"""Kinds listed when observing (Deployments too: ``executors launch`` makes those)."""


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """One API request: method, path, query, headers, JSON body."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


def _collection(kind: str, namespace: str) -> str:
    try:
        group, resource = _COLLECTIONS[kind]
    except KeyError:
        raise LaunchError(f"the launcher manages no {kind}") from None
    return f"{group}/namespaces/{namespace}/{resource}"


def list_request(kind: str, namespace: str) -> KubeRequest:
    """List the launcher's objects of ``kind`` (by its label: it sees nothing else)."""
    return KubeRequest("GET", _collection(kind, namespace), (("labelSelector", OWNED_SELECTOR),))


def get_request(kind: str, namespace: str, name: str) -> KubeRequest:
    """Read one object (to see whether a name is taken by someone else)."""
    return KubeRequest("GET", f"{_collection(kind, namespace)}/{name}")


def apply_request(manifest: dict[str, Any]) -> KubeRequest:
    """Server-side apply of ``manifest`` as the launcher's field manager.

    ``force``: fields another manager (``kubectl edit``) changed on the launcher's own
    object are taken back; objects it does not own never get here (see the module doc).
    """
    meta = manifest["metadata"]
    return KubeRequest(
        "PATCH",
        f"{_collection(manifest['kind'], meta['namespace'])}/{meta['name']}",
        (("fieldManager", MANAGER), ("force", "true")),
        {"Content-Type": APPLY_CONTENT_TYPE},
        manifest,
    )


def delete_request(kind: str, namespace: str, name: str, uid: str | None) -> KubeRequest:
    """Delete one object (its pods in the background), only if it is still ``uid``."""
    options: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if uid is not None:
        options["preconditions"] = {"uid": uid}
    return KubeRequest("DELETE", f"{_collection(kind, namespace)}/{name}", body=options)


def is_owned(item: dict[str, Any]) -> bool:
    """Whether an object carries the launcher's ownership label."""
    labels = (item.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGER)


def observed_of(kind: str, item: dict[str, Any]) -> ObservedObject:
    """An API object as the planner sees it."""
    meta = item.get("metadata") or {}
    notes = meta.get("annotations") or {}
    return ObservedObject(
        ObjectRef(kind, str(meta.get("name", ""))),
        notes.get(LAUNCH_ID_ANNOTATION),
        notes.get(SPEC_HASH_ANNOTATION),
        managed=is_owned(item),
    )


def uid_of(item: dict[str, Any]) -> str | None:
    """The object's uid (for a preconditioned delete)."""
    uid = (item.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def mark(manifest: dict[str, Any], launch_id: str) -> tuple[dict[str, Any], str]:
    """``manifest`` with the launcher's ownership marks, and its digest."""
    digest = spec_hash(manifest)
    marked = copy.deepcopy(manifest)
    meta = marked["metadata"]
    meta["labels"] = {
        **meta.get("labels", {}),
        MANAGED_BY_LABEL: MANAGER,
        LAUNCH_LABEL: workload_name(launch_id),
    }
    meta["annotations"] = {LAUNCH_ID_ANNOTATION: launch_id, SPEC_HASH_ANNOTATION: digest}
    return marked, digest


def render_kubernetes(launch: ExecutorRegistration, base: LaunchOptions) -> list[DesiredObject]:
    """The StatefulSet and Service of ``launch``, marked (see the module docstring)."""
    spec = check_launch(launch)
    options = LaunchOptions(
        namespace=base.namespace,
        serving_image=spec.image,
        mulambda_image=spec.mulambda_image or base.mulambda_image,
        config_map=base.config_map,
        secret_name=base.secret_name,
        replicas=spec.replicas,
        cpu=spec.cpu,
        memory=spec.memory,
        ordinal_ids=True,
    )
    out = []
    for manifest in (executor_deployment(launch, options), executor_service(launch, options)):
        marked, digest = mark(manifest, launch.executor_id)
        ref = ObjectRef(marked["kind"], marked["metadata"]["name"])
        out.append(DesiredObject(ref, launch.executor_id, digest, marked))
    return out


def api_error(status: int | None, reason: str | None, body: Any, what: str) -> MulambdaError:
    """The MulambdaError for a refused request: 401/403 LaunchForbidden, 429/5xx (and no
    answer) retriable TransportError, anything else a LaunchError, with the server's message."""
    message = reason or ""
    try:
        document = json.loads(body) if isinstance(body, (str, bytes)) else body
        if isinstance(document, dict) and document.get("message"):
            message = str(document["message"])
    except ValueError:
        pass
    text = f"Kubernetes refused to {what}: {status} {message}".strip()
    if status in (401, 403):
        return LaunchForbidden(text, status=status)
    if status is None or status == 429 or status >= 500:
        return TransportError(text, retriable=True)
    return LaunchError(text, status=status)
