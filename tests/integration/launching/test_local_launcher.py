"""The administrator's workflow on one machine, end to end, over real Kafka, Redis and MinIO.

A SavedModel is uploaded to MinIO; a launch request (a registration with a LaunchSpec,
two replicas) is published; the launcher's local backend starts ``mulambda executor
serve`` and ``mulambda companion`` per replica; both executors answer TF Serving's REST API
and a real selector offers exactly them (never the launch request itself); one replica
stopping leaves the other registered and selectable; a resync starts it again; the
launch's tombstone removes every process. An invalid launch is dead-lettered with the
reason and reported ``failed``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from mulambda.executors.registration import read_executors
from mulambda.executors.tfserving import TFServingClient
from mulambda.harness.infra import clean_environ
from mulambda.kafka import Producer
from mulambda.launching.local import LocalProcessBackend
from mulambda.launching.worker import Launcher
from mulambda.routing.requester import Requester
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import (
    ExecutorProtocol,
    ExecutorRegistration,
    LaunchAction,
    LaunchSpec,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    Traits,
    utcnow,
)
from tests.conftest import REPO, Infra, remove_bucket
from tests.integration.launching.support import dead_letters, group_alive, launch_reports, until

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]

READY_TIMEOUT_S = 150.0
"""Two replicas each import TensorFlow on a shared 2-core machine."""


def _uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def doubler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel (TF Serving layout ``base/1/``) answering ``y = 2 x``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf: Any = pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"y": x * 2.0},
        input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")],
    )
    base = tmp_path_factory.mktemp("doubler")
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base / "1"


@pytest.fixture(scope="module")
def bucket(infra: Infra) -> Iterator[str]:
    """A bucket of this module's own, emptied and removed afterwards."""
    name = f"mulambda-test-launch-{_uid()}"
    yield name
    remove_bucket(infra, name)


@pytest_asyncio.fixture(loop_scope="session")
async def selector(infra: Infra, own_catalog: Catalog) -> AsyncIterator[Selector]:
    """A real selector on this test's topics, with a Redis prefix of its own."""
    sid, key_prefix = f"sel-{_uid()}", f"test-launch-{_uid()}:"
    worker = Selector(
        infra.kafka(sid),
        own_catalog,
        ViewStore(infra.redis_url, key_prefix=key_prefix),
        selector_id=sid,
        group_id=f"test-launch-sel-{_uid()}",
        grace_s=2.0,
    )
    async with worker:
        yield worker
    async with ViewStore(infra.redis_url, key_prefix=key_prefix) as store:
        await store.clear()


def _launch(launch_id: str, model: str, traits: Traits, **spec: Any) -> ExecutorRegistration:
    return ExecutorRegistration(
        executor_id=launch_id,
        model_name=model,
        model_version=1,
        traits=traits,
        accuracy=0.8,
        endpoint="http://launch.invalid",  # a launch request is never dialled
        heartbeat_interval_s=1.0,
        launch=LaunchSpec(**spec),
    )


async def test_upload_launch_answer_select_stop_one_tombstone(
    infra: Infra,
    own_catalog: Catalog,
    bucket: str,
    doubler: Path,
    selector: Selector,
    tmp_path: Path,
) -> None:
    model = f"dbl{_uid()}"
    env = {
        **clean_environ(),
        **infra.env(),
        "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix,
        "MULAMBDA_MINIO_BUCKET": bucket,
        "MULAMBDA_SHUTDOWN_GRACE_S": "3",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }

    async def mulambda(*args: str) -> str:
        """The administrator's command, as a process of its own."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mulambda", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode()

    await mulambda("models", "upload", str(doubler), "--name", model, "--version", "1")
    backend = LocalProcessBackend(
        tmp_path / "launcher", command=(sys.executable, "-m", "mulambda"), env=env, stop_grace_s=8
    )
    launcher = Launcher(
        infra.kafka("test-launcher"),
        own_catalog,
        backend,
        group_id=f"test-launcher-{_uid()}",
        resync_interval_s=3600.0,  # resyncs are called by hand below
        health_port=0,
        shutdown_grace_s=3.0,
    )
    traits = Traits(model_type=f"launch-{_uid()}", input_format="f32[2]", output_format="f32[2]")
    launch_id = f"lx-{_uid()}"
    replicas = [f"{launch_id}-0", f"{launch_id}-1"]
    requester: Requester[SelectionRequest, SelectionReply] = Requester(
        infra.kafka("test-launch-requester"),
        request_topic=own_catalog.name(Topic.SELECTION_REQUESTS),
        reply_topic=own_catalog.name(Topic.SELECTION_REPLIES),
        reply_model=SelectionReply,
    )

    async def selectable() -> list[str]:
        ask = SelectionRequest(
            reply_topic="placeholder", deadline=utcnow(), client_id="launch-test", traits=traits
        )
        reply = await requester.request(ask, timeout_s=5.0)
        if reply.status is not SelectionStatus.OK:
            return []
        return sorted(c.executor_id for c in reply.candidates)

    async def registered() -> dict[str, ExecutorRegistration]:
        return await read_executors(infra.kafka(), own_catalog)

    async with launcher, requester:
        assert launcher.ready()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{launcher.health_port}/readyz") as ready,
        ):
            assert ready.status == 200
        published = await mulambda(
            "executors", "launch", "--publish", "--executor-id", launch_id,
            "--model-name", model, "--model-version", "1", "--model-type", traits.model_type,
            "--input-format", traits.input_format, "--output-format", traits.output_format,
            "--accuracy", "0.8", "--heartbeat-interval", "1", "--replicas", "2",
        )  # fmt: skip
        assert published.splitlines() == [
            f"published launch request {launch_id}",
            f"replicas register as {replicas[0]} ... {replicas[1]}",
        ]
        listed = await mulambda("executors", "list")
        assert f"{launch_id}\t{model}\t1\t" in listed
        assert "\tlaunch x2" in listed

        async def both_selectable() -> bool:
            return await selectable() == replicas

        try:
            await until(both_selectable, READY_TIMEOUT_S, "both replicas to be selectable")
        except AssertionError:
            logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "launcher").glob("*.log"))
            raise AssertionError(f"replicas not selectable; their logs:\n{logs}") from None
        reports = await launch_reports(infra, own_catalog, launch_id)
        assert [r.launch_action for r in reports] == [LaunchAction.CREATED]
        assert "create replica/" in (reports[0].detail or "")

        # Each replica answers the TF Serving REST API at the endpoint it registered.
        found = await registered()
        assert launch_id in found
        assert found[launch_id].launch is not None
        for replica in replicas:
            endpoint = found[replica].endpoint
            assert endpoint == f"http://127.0.0.1:{backend.port_of(replica)}"
            assert found[replica].launch is None
            assert found[replica].traits == traits
            async with TFServingClient(endpoint) as client:
                answer = await client.predict(model, instances=[[1.0, 2.5]])
            assert answer["predictions"] == [[2.0, 5.0]]

        # One replica stopping deregisters itself only.
        first, second = (backend.group_of(r) for r in replicas)
        assert first is not None
        assert second is not None
        os.killpg(first, signal.SIGTERM)

        async def first_gone() -> bool:
            return replicas[0] not in await registered() and not group_alive(first)

        await until(first_gone, 30, f"{replicas[0]} to deregister")
        assert replicas[1] in await registered()

        async def only_second() -> bool:
            return await selectable() == [replicas[1]]

        await until(only_second, 15, "the selector to offer only the other replica")

        # A resync notices the dead replica and starts it again; the other keeps running.
        await launcher.reconcile_all()
        assert backend.group_of(replicas[1]) == second
        await until(both_selectable, READY_TIMEOUT_S, "the restarted replica")

        # The tombstone: every process gone, every replica deregistered.
        groups = [backend.group_of(r) for r in replicas]
        assert f"deregistered {launch_id}" in await mulambda("executors", "deregister", launch_id)

        async def all_gone() -> bool:
            known = await registered()
            alive = [g for g in groups if g is not None and group_alive(g)]
            return not alive and not any(r in known for r in [launch_id, *replicas])

        await until(all_gone, 30, "the launch's processes to be gone")
        reports = await launch_reports(infra, own_catalog, launch_id)
        assert reports[-1].launch_action is LaunchAction.DELETED
        assert await selectable() == []

    # Stopping the launcher stopped what it ran (nothing is left after the tombstone).
    assert all(backend.group_of(r) is None for r in replicas)


async def test_an_invalid_launch_is_reported_failed_and_dead_lettered(
    infra: Infra, own_catalog: Catalog, tmp_path: Path
) -> None:
    backend = LocalProcessBackend(tmp_path / "launcher", env=clean_environ())
    launcher = Launcher(
        infra.kafka("test-launcher-bad"),
        own_catalog,
        backend,
        group_id=f"test-launcher-{_uid()}",
        shutdown_grace_s=2.0,
    )
    traits = Traits(model_type=f"bad-{_uid()}", input_format="a", output_format="b")
    launch_id = f"bad-{_uid()}"
    bad = _launch(launch_id, "m", traits).model_copy(update={"protocol": ExecutorProtocol.OIP_V2})
    async with launcher, Producer(infra.kafka("test-launch-admin")) as admin:
        await admin.send_and_wait(
            own_catalog.name(Topic.EXECUTOR_REGISTRATIONS), bad, key=launch_id
        )
        (letter,) = await until(
            lambda: dead_letters(infra, own_catalog, launch_id), 30, "the dead letter"
        )
        assert "TF Serving executors only" in letter.reason
        assert letter.error_type == "LaunchError"
        reports = await launch_reports(infra, own_catalog, launch_id)
        assert [r.launch_action for r in reports] == [LaunchAction.FAILED]
        assert backend.group_of(f"{launch_id}-0") is None
