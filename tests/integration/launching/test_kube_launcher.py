"""The Kubernetes backend and the launcher against a real API server (tests/kube.py).

The launcher authenticates as the ``mulambda-launcher`` ServiceAccount of a namespace of
its own, bound to ``deploy/k8s/base/launcher-rbac.yaml``'s Role as applied there. There
is no kubelet: objects are created, updated and deleted, no pod runs. Checked: the
StatefulSet and Service a launch needs appear with the ownership marks, follow a new
spec, and go with the tombstone; objects without the launcher's label are left alone
(listed never, deleted never, a name they take is a reported conflict); what the Role
does not allow is refused with a clear, non-retried error.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from mulambda.errors import LaunchError, LaunchForbidden
from mulambda.kafka import Producer
from mulambda.launching.kubernetes import KubernetesBackend, KubeServer
from mulambda.launching.manifests import LaunchOptions, workload_name
from mulambda.launching.plan import (
    LAUNCH_ID_ANNOTATION,
    LAUNCH_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    SPEC_HASH_ANNOTATION,
    plan,
)
from mulambda.launching.worker import Launcher
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import (
    ExecutorRegistration,
    LaunchAction,
    LaunchSpec,
)
from tests.conftest import REPO, Infra
from tests.factories import registration
from tests.integration.launching.support import dead_letters, launch_reports, until
from tests.kube import KubeApi

pytestmark = pytest.mark.integration

RBAC = REPO / "deploy" / "k8s" / "base" / "launcher-rbac.yaml"


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _launch(launch_id: str, **spec: Any) -> ExecutorRegistration:
    return registration(launch_id, endpoint="http://launch.invalid", launch=LaunchSpec(**spec))


@pytest.fixture
def namespace(kube_api: KubeApi) -> Iterator[str]:
    """A namespace with the launcher's ServiceAccount, Role and RoleBinding applied."""
    name = f"launch-{_uid()}"
    kube_api.kubectl("create", "namespace", name)
    kube_api.kubectl("apply", "--server-side", "-n", name, "-f", str(RBAC))
    yield name
    kube_api.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _backend(kube_api: KubeApi, namespace: str, *, token_namespace: str | None = None) -> Any:
    token = kube_api.service_account_token(token_namespace or namespace, "mulambda-launcher")
    return KubernetesBackend(
        LaunchOptions(namespace=namespace),
        server=KubeServer(kube_api.url, token, kube_api.ca_file),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def backend(kube_api: KubeApi, namespace: str) -> AsyncIterator[KubernetesBackend]:
    """The backend, authenticated as the launcher's ServiceAccount."""
    async with _backend(kube_api, namespace) as started:
        yield started


def _get(kube_api: KubeApi, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    done = kube_api.kubectl(
        "get", kind, name, "-n", namespace, "-o", "json", "--show-managed-fields", check=False
    )
    if done.returncode != 0:
        assert "NotFound" in done.stderr, done.stderr
        return None
    document: dict[str, Any] = json.loads(done.stdout)
    return document


async def _reconcile(backend: KubernetesBackend, *launches: ExecutorRegistration) -> None:
    desired = [d for launch in launches for d in backend.render(launch)]
    result = plan(desired, await backend.observe())
    assert not result.conflicts
    observed = {o.ref: o for o in await backend.observe()}
    for action in result.actions:
        if action.desired is not None:
            await backend.apply(action.desired)
        else:
            await backend.delete(observed[action.ref])


async def test_objects_are_created_updated_and_deleted_with_ownership_marks(
    kube_api: KubeApi, namespace: str, backend: KubernetesBackend
) -> None:
    launch = _launch("wine", replicas=2, cpu="250m")
    name = workload_name("wine")
    await _reconcile(backend, launch)

    workload = _get(kube_api, namespace, "statefulset", name)
    service = _get(kube_api, namespace, "service", name)
    assert workload is not None
    assert service is not None
    for obj in (workload, service):
        meta = obj["metadata"]
        assert meta["labels"][MANAGED_BY_LABEL] == MANAGER
        assert meta["labels"][LAUNCH_LABEL] == name
        assert meta["annotations"][LAUNCH_ID_ANNOTATION] == "wine"
        managers = {m["manager"] for m in meta["managedFields"]}
        assert managers == {MANAGER}  # server-side apply under its own field manager
    assert workload["spec"]["replicas"] == 2
    assert service["spec"]["clusterIP"] == "None"
    companion = workload["spec"]["template"]["spec"]["containers"][1]
    assert companion["args"][companion["args"].index("--executor-id") + 1] == "wine-$(POD_INDEX)"
    first_hash = workload["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    first_uid = workload["metadata"]["uid"]
    assert {(o.ref.kind, o.ref.name) for o in await backend.observe()} == {
        ("StatefulSet", name),
        ("Service", name),
    }

    # Nothing changed: nothing to do. A new spec: the StatefulSet is updated in place.
    desired = backend.render(launch)
    assert plan(desired, await backend.observe()).actions == ()
    await _reconcile(backend, _launch("wine", replicas=3, cpu="250m"))
    workload = _get(kube_api, namespace, "statefulset", name)
    assert workload is not None
    assert workload["spec"]["replicas"] == 3
    assert workload["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != first_hash
    assert workload["metadata"]["uid"] == first_uid  # the same object, not a replacement

    # Withdrawn: both go.
    await _reconcile(backend)
    assert _get(kube_api, namespace, "statefulset", name) is None
    assert _get(kube_api, namespace, "service", name) is None
    assert await backend.observe() == []


async def test_objects_without_the_launchers_label_are_left_alone(
    kube_api: KubeApi, namespace: str, backend: KubernetesBackend
) -> None:
    # A foreign Service under the name launch "taken" would need, and another one aside.
    taken = workload_name("taken")
    for service in (taken, "someone-elses"):
        kube_api.kubectl("create", "service", "clusterip", service, "--tcp=80:80", "-n", namespace)
    assert await backend.observe() == []  # listed by label: the launcher sees neither

    desired = {d.ref.kind: d for d in backend.render(_launch("taken", replicas=1))}
    with pytest.raises(LaunchError, match="not the launcher's"):
        await backend.apply(desired["Service"])
    for service in (taken, "someone-elses"):
        left = _get(kube_api, namespace, "service", service)
        assert left is not None
        assert MANAGED_BY_LABEL not in (left["metadata"].get("labels") or {})
        assert {m["manager"] for m in left["metadata"]["managedFields"]} == {"kubectl-create"}

    # A withdrawal of everything deletes the launcher's objects only.
    await _reconcile(backend, _launch("wine", replicas=1))
    await _reconcile(backend)
    assert _get(kube_api, namespace, "service", "someone-elses") is not None
    assert _get(kube_api, namespace, "service", taken) is not None


async def test_what_the_role_does_not_allow_is_refused_clearly(
    kube_api: KubeApi, namespace: str
) -> None:
    # The Role is bound in its own namespace only: another namespace is out of bounds.
    elsewhere = f"other-{_uid()}"
    kube_api.kubectl("create", "namespace", elsewhere)
    try:
        async with _backend(kube_api, elsewhere, token_namespace=namespace) as outside:
            with pytest.raises(LaunchForbidden, match="403") as refused:
                await outside.observe()
            assert refused.value.retriable is False
            assert "mulambda-launcher" in refused.value.reason
            desired = outside.render(_launch("wine", replicas=1))
            with pytest.raises(LaunchForbidden, match="forbidden"):
                await outside.apply(desired[0])
        assert _get(kube_api, elsewhere, "statefulset", workload_name("wine")) is None
    finally:
        kube_api.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)


async def test_the_launcher_worker_follows_launch_requests_on_kafka(
    infra: Infra, own_catalog: Catalog, kube_api: KubeApi, namespace: str
) -> None:
    launcher = Launcher(
        infra.kafka("test-kube-launcher"),
        own_catalog,
        _backend(kube_api, namespace),
        group_id=f"test-kube-launcher-{_uid()}",
        shutdown_grace_s=2.0,
    )
    topic = own_catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    name = workload_name("beer")

    async def actions() -> list[LaunchAction | None]:
        return [s.launch_action for s in await launch_reports(infra, own_catalog, "beer")]

    async def replicas() -> int | None:
        found = _get(kube_api, namespace, "statefulset", name)
        return None if found is None else int(found["spec"]["replicas"])

    async def equal(read: Callable[[], Awaitable[Any]], expected: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while (got := await read()) != expected:
            assert time.monotonic() < deadline, f"{what}: {got!r}, not {expected!r}"
            await asyncio.sleep(0.3)

    async def service() -> bool:
        return _get(kube_api, namespace, "service", name) is not None

    async with launcher, Producer(infra.kafka("test-kube-admin")) as admin:
        await admin.send_and_wait(topic, _launch("beer", replicas=1), key="beer")
        await equal(replicas, 1, "the StatefulSet")
        await equal(service, True, "the Service")
        await equal(actions, [LaunchAction.CREATED], "the reports")

        await admin.send_and_wait(topic, _launch("beer", replicas=2), key="beer")
        await equal(replicas, 2, "the scaled StatefulSet")
        await equal(actions, [LaunchAction.CREATED, LaunchAction.UPDATED], "the reports")

        await admin.send_and_wait(topic, None, key="beer")
        await equal(replicas, None, "the deleted StatefulSet")
        await equal(service, False, "the deleted Service")
        await equal(
            actions,
            [LaunchAction.CREATED, LaunchAction.UPDATED, LaunchAction.DELETED],
            "the reports",
        )


async def test_a_forbidden_launch_is_reported_and_dead_lettered(
    infra: Infra, own_catalog: Catalog, kube_api: KubeApi, namespace: str
) -> None:
    elsewhere = f"other-{_uid()}"
    kube_api.kubectl("create", "namespace", elsewhere)
    launcher = Launcher(
        infra.kafka("test-kube-launcher"),
        own_catalog,
        _backend(kube_api, elsewhere, token_namespace=namespace),
        group_id=f"test-kube-launcher-{_uid()}",
        shutdown_grace_s=2.0,
    )
    try:
        async with launcher, Producer(infra.kafka("test-kube-admin")) as admin:
            topic = own_catalog.name(Topic.EXECUTOR_REGISTRATIONS)
            await admin.send_and_wait(topic, _launch("cider", replicas=1), key="cider")
            letters = await until(
                lambda: dead_letters(infra, own_catalog, "cider"), 30, "the dead letter"
            )
            assert letters[0].original_key == b"cider"
            assert letters[0].error_type == "LaunchForbidden"
            assert "403" in letters[0].reason
            reports = await launch_reports(infra, own_catalog, "cider")
            assert reports
            assert {r.launch_action for r in reports} == {LaunchAction.FAILED}
    finally:
        kube_api.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)
