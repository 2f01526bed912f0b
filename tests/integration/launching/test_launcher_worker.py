"""The launcher worker's bookkeeping over real Kafka: restarts, withdrawals while it was
down, superseded records, retried failures.

The backend here is a recording one (objects in a dict, like a cluster's, they outlive
the worker): what is under test is which actions the worker asks for, and when. The real
backends are tested against real processes and a real API server next door.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mulambda.errors import TransportError
from mulambda.executors.registration import register_executor
from mulambda.kafka import Producer
from mulambda.launching.local import render_replicas
from mulambda.launching.plan import DesiredObject, ObjectRef, ObservedObject
from mulambda.launching.worker import Launcher
from mulambda.selection.admission import RegistrationGate
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import DeadLetter, ExecutorRegistration, LaunchAction, LaunchSpec
from mulambda.wire.signatures import executor_key
from tests.conftest import Infra
from tests.factories import registration
from tests.integration.launching.support import dead_letters, launch_reports, until

pytestmark = pytest.mark.integration


class RecordingBackend:
    """Objects by ref, every action in order; ``fail_deletes`` refuses that many deletes."""

    name = "recording"

    def __init__(self) -> None:
        self.objects: dict[ObjectRef, DesiredObject] = {}
        self.actions: list[tuple[str, str]] = []
        self.fail_deletes = 0

    def render(self, launch: ExecutorRegistration) -> list[DesiredObject]:
        return render_replicas(launch)

    async def observe(self) -> list[ObservedObject]:
        return [ObservedObject(r, d.launch_id, d.spec_hash) for r, d in self.objects.items()]

    async def apply(self, desired: DesiredObject) -> None:
        verb = "update" if desired.ref in self.objects else "create"
        self.objects[desired.ref] = desired
        self.actions.append((verb, desired.ref.name))

    async def delete(self, observed: ObservedObject) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise TransportError("the backend is briefly unreachable")
        del self.objects[observed.ref]
        self.actions.append(("delete", observed.ref.name))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass  # the objects stay, as a cluster's do


def _launch(launch_id: str, replicas: int, accuracy: float = 0.9) -> ExecutorRegistration:
    return registration(
        launch_id,
        accuracy=accuracy,
        endpoint="http://launch.invalid",
        launch=LaunchSpec(replicas=replicas),
    )


async def test_restarts_withdrawals_while_down_and_superseded_records(
    infra: Infra, own_catalog: Catalog
) -> None:
    backend = RecordingBackend()
    group = f"test-launcher-{uuid.uuid4().hex[:8]}"
    topic = own_catalog.name(Topic.EXECUTOR_REGISTRATIONS)

    def worker(group_id: str = group) -> Launcher:
        return Launcher(
            infra.kafka("test-launcher-worker"),
            own_catalog,
            backend,
            group_id=group_id,
            shutdown_grace_s=2.0,
        )

    async with Producer(infra.kafka("test-launcher-admin")) as admin:
        async with worker():
            await admin.send_and_wait(topic, _launch("a", 1), key="a")
            await admin.send_and_wait(topic, _launch("a", 2), key="a")
            await until(lambda: len(backend.objects) == 2, 30, "a's two replicas")
        assert backend.actions == [("create", "a-0"), ("create", "a-1")]

        # While the launcher is down: a new launch, and a withdrawn one.
        await admin.send_and_wait(topic, _launch("b", 1), key="b")
        await admin.send_and_wait(topic, None, key="a")
        backend.actions.clear()
        async with worker() as restarted:
            # The start-up reconciliation did everything before start() returned.
            assert sorted(backend.actions) == [
                ("create", "b-0"),
                ("delete", "a-0"),
                ("delete", "a-1"),
            ]
            assert restarted.ready()
            assert sorted(r.name for r in backend.objects) == ["b-0"]
            # A replica's own registration and tombstone are none of its business.
            await admin.send_and_wait(topic, registration("b-0"), key="b-0")
            await admin.send_and_wait(topic, None, key="b-0")
            await admin.send_and_wait(topic, _launch("b", 1, accuracy=0.5), key="b")
            await until(lambda: ("update", "b-0") in backend.actions, 30, "b's update")
        assert sorted(backend.actions) == [
            ("create", "b-0"), ("delete", "a-0"), ("delete", "a-1"), ("update", "b-0"),
        ]  # fmt: skip

        # A new group reads every record from the beginning: a's old specs and b's old
        # one are superseded, so nothing is reverted, not even briefly.
        backend.actions.clear()
        async with worker(f"{group}-fresh") as fresh:
            await asyncio.sleep(2.0)  # let it read the whole topic in its group
            assert fresh.ready()
        assert backend.actions == []

        reports = [
            (r.executor_id, r.launch_action) for r in await launch_reports(infra, own_catalog)
        ]
        assert reports[:2] == [("a", LaunchAction.CREATED), ("a", LaunchAction.UPDATED)]
        assert ("a", LaunchAction.DELETED) in reports
        assert ("b", LaunchAction.CREATED) in reports
        assert reports.count(("b", LaunchAction.UPDATED)) == 1


async def test_a_failed_withdrawal_is_retried_until_it_succeeds(
    infra: Infra, own_catalog: Catalog
) -> None:
    backend = RecordingBackend()
    topic = own_catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    launcher = Launcher(
        infra.kafka("test-launcher-worker"),
        own_catalog,
        backend,
        group_id=f"test-launcher-{uuid.uuid4().hex[:8]}",
        shutdown_grace_s=2.0,
    )
    async with launcher, Producer(infra.kafka("test-launcher-admin")) as admin:
        await admin.send_and_wait(topic, _launch("c", 1), key="c")
        await until(lambda: len(backend.objects) == 1, 30, "c's replica")
        backend.fail_deletes = 2
        await admin.send_and_wait(topic, None, key="c")
        await until(lambda: not backend.objects, 30, "c's replica to be deleted")
    assert backend.actions == [("create", "c-0"), ("delete", "c-0")]
    found = await launch_reports(infra, own_catalog)
    reports = [(r.executor_id, r.launch_action) for r in found]
    assert reports == [
        ("c", LaunchAction.CREATED),
        ("c", LaunchAction.FAILED),
        ("c", LaunchAction.FAILED),
        ("c", LaunchAction.DELETED),
    ]


async def test_a_companion_refuses_to_confirm_a_launch_request(
    infra: Infra, own_catalog: Catalog
) -> None:
    from mulambda.errors import ConfigurationError
    from mulambda.executors.companion import Companion
    from mulambda.executors.tfserving import TFServingClient

    topic = own_catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    async with Producer(infra.kafka("test-launcher-admin")) as admin:
        await admin.send_and_wait(topic, _launch("d", 1), key="d")
    companion = Companion(
        infra.kafka("test-companion"),
        own_catalog,
        None,
        executor_id="d",
        tfserving=TFServingClient("http://127.0.0.1:1"),
    )
    with pytest.raises(ConfigurationError, match="d is a launch request, not an executor"):
        await companion.start()
    await companion.stop()


async def test_with_a_registration_secret_only_signed_launch_requests_launch(
    infra: Infra, own_catalog: Catalog
) -> None:
    backend = RecordingBackend()
    secret = b"launch-test-secret"
    topic = own_catalog.name(Topic.EXECUTOR_REGISTRATIONS)

    def worker() -> Launcher:
        return Launcher(
            infra.kafka("test-launcher-signed"),
            own_catalog,
            backend,
            group_id=f"test-launcher-{uuid.uuid4().hex[:8]}",
            shutdown_grace_s=2.0,
            registrations=RegistrationGate(secret),
        )

    async with Producer(infra.kafka("test-launcher-admin")) as admin:
        # Before the launcher starts: a forged launch (another id's key) lies in the
        # replayed part of the topic.
        await register_executor(
            admin, own_catalog, _launch("early", 1), signing_key=executor_key(secret, "other")
        )
        async with worker():
            await admin.send_and_wait(topic, _launch("unsigned", 1), key="unsigned")
            await register_executor(
                admin, own_catalog, _launch("signed", 1), signing_key=executor_key(secret, "signed")
            )
            await until(lambda: backend.objects, 30, "the signed launch's replica")
            for key in ("early", "unsigned"):

                async def letters_of(key: str = key) -> list[DeadLetter]:
                    return await dead_letters(infra, own_catalog, key)

                letters = await until(letters_of, 30, f"{key}'s dead letter")
                assert len(letters) == 1
                assert letters[0].error_type == "UntrustedRecord"
        assert [r.name for r in backend.objects] == ["signed-0"]
        assert backend.actions == [("create", "signed-0")]
