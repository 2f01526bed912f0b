"""The local-process backend: ``mulambda executor serve`` + ``mulambda companion`` per replica.

For one machine without a cluster, so an administrator's workflow is the same as on
Kubernetes. Each replica of launch L is one process group of two processes: an executor
pulling the launch's model from MinIO and answering the TF Serving REST API on a free
loopback port, and a companion registering it as ``L-<ordinal>`` at that port (and
tombstoning that id when it stops). The backend owns exactly the groups it started:
deleting a replica, or stopping the backend, sends SIGTERM to that group (the companion
deregisters), then SIGKILL after the grace period. A replica whose processes ended on
their own is reaped on the next ``observe`` and so created again by the next plan.
Logs go to ``<state_dir>/<replica>.log``, pulled models to ``<state_dir>/<replica>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mulambda.errors import ConfigurationError, LaunchError
from mulambda.harness.infra import free_port
from mulambda.launching.desired import check_launch, replica_id, spec_hash
from mulambda.launching.manifests import companion_args
from mulambda.launching.plan import DesiredObject, ObjectRef, ObservedObject
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.events import ExecutorRegistration

log = logging.getLogger(__name__)

REPLICA_KIND: Final = "replica"
"""Kind of the local backend's objects (one per executor id)."""

_ENVELOPE = {"schema_version", "message_id", "timestamp"}


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """One replica to run: the launch it belongs to and the executor id it registers."""

    launch: ExecutorRegistration
    executor_id: str

    def serve_args(self, host: str, port: int, model_dir: Path) -> list[str]:
        """``mulambda executor serve`` arguments pulling the launch's model from MinIO."""
        model = self.launch.model_name
        if self.launch.model_version is not None:
            model += f":{self.launch.model_version}"
        return [
            "executor", "serve", "--host", host, "--port", str(port),
            "--model", model, "--model-dir", str(model_dir),
        ]  # fmt: skip

    def companion_args(self, host: str, port: int, node: str) -> list[str]:
        """``mulambda companion`` arguments registering the replica at that port."""
        return companion_args(
            self.launch,
            self.executor_id,
            endpoint=f"http://{host}:{port}",
            status_endpoint=None,
            node=node,
        )


def render_replicas(launch: ExecutorRegistration) -> list[DesiredObject]:
    """One desired replica per ordinal; the digest leaves out the replica count, so
    scaling starts or stops replicas without restarting the others."""
    spec = check_launch(launch)
    document = launch.model_dump(mode="json", exclude=_ENVELOPE)
    document["launch"].pop("replicas", None)
    digest = spec_hash(document)
    out = []
    for ordinal in range(spec.replicas):
        executor_id = replica_id(launch.executor_id, ordinal)
        ref = ObjectRef(REPLICA_KIND, executor_id)
        out.append(DesiredObject(ref, launch.executor_id, digest, ReplicaPlan(launch, executor_id)))
    return out


@dataclass(slots=True)
class _Running:
    launch_id: str
    spec_hash: str
    port: int
    group: int
    processes: tuple[asyncio.subprocess.Process, ...]

    def ended(self) -> bool:
        return any(p.returncode is not None for p in self.processes)


def _file_name(executor_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in executor_id)


class LocalProcessBackend(Lifecycle):
    """Runs launch requests as local process groups (see the module docstring).

    ``command`` starts the MuLambda CLI (default: this interpreter's ``-m mulambda``);
    ``env`` is the children's environment (default: this process's), which carries the
    connection settings; each child's health server gets a free port of its own.
    """

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        command: Sequence[str] = (sys.executable, "-m", "mulambda"),
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        node: str = "local",
        stop_grace_s: float = 10.0,
    ) -> None:
        if not command:
            raise ConfigurationError("the local launcher needs a command to run mulambda")
        self._state_dir = state_dir
        self._command = list(command)
        self._env = dict(os.environ if env is None else env)
        # A worker's own port setting must not make every child bind the same port.
        self._env["MULAMBDA_METRICS_PORT"] = "0"
        self._host = host
        self._node = node
        self._stop_grace_s = stop_grace_s
        self._running: dict[str, _Running] = {}

    def render(self, launch: ExecutorRegistration) -> list[DesiredObject]:
        """See :func:`render_replicas`."""
        return render_replicas(launch)

    async def start(self) -> None:
        """Create the state directory."""
        try:
            self._state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {self._state_dir}: {exc}") from exc

    async def stop(self) -> None:
        """Stop every replica this backend started; idempotent."""
        names = list(self._running)
        await asyncio.gather(*(self._terminate(n) for n in names))

    def port_of(self, executor_id: str) -> int | None:
        """REST port of a running replica (for logs and tests)."""
        running = self._running.get(executor_id)
        return None if running is None else running.port

    def group_of(self, executor_id: str) -> int | None:
        """Process group id of a running replica."""
        running = self._running.get(executor_id)
        return None if running is None else running.group

    async def observe(self) -> list[ObservedObject]:
        """The replicas still running; ended ones are reaped (their group killed)."""
        for name in [n for n, r in self._running.items() if r.ended()]:
            codes = [p.returncode for p in self._running[name].processes]
            log.warning("replica %s ended on its own (exit codes %s); reaping it", name, codes)
            await self._terminate(name)
        return [
            ObservedObject(ObjectRef(REPLICA_KIND, name), r.launch_id, r.spec_hash)
            for name, r in self._running.items()
        ]

    async def apply(self, desired: DesiredObject) -> None:
        """(Re)start the replica: stop the old group, start a new one."""
        plan = desired.body
        if not isinstance(plan, ReplicaPlan):
            raise LaunchError(f"{desired.ref} is not a local replica")
        await self._terminate(plan.executor_id)
        port = free_port()
        base = self._state_dir / _file_name(plan.executor_id)
        log_path = base.with_suffix(".log")
        try:
            with log_path.open("ab") as out:
                serve = await asyncio.create_subprocess_exec(
                    *self._command,
                    *plan.serve_args(self._host, port, base / "models"),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self._env,
                    process_group=0,  # a group of its own, leading it
                )
                try:
                    companion = await asyncio.create_subprocess_exec(
                        *self._command,
                        *plan.companion_args(self._host, port, self._node),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=asyncio.subprocess.STDOUT,
                        env=self._env,
                        process_group=serve.pid,
                    )
                except OSError:
                    _signal_group(serve.pid, signal.SIGKILL)
                    await serve.wait()
                    raise
        except OSError as exc:
            raise LaunchError(f"cannot start replica {plan.executor_id}: {exc}") from exc
        self._running[plan.executor_id] = _Running(
            desired.launch_id, desired.spec_hash, port, serve.pid, (serve, companion)
        )
        log.info(
            "started replica %s on %s:%d (process group %d, log %s)",
            plan.executor_id,
            self._host,
            port,
            serve.pid,
            log_path,
        )

    async def delete(self, observed: ObservedObject) -> None:
        """Stop the replica's process group (a replica it does not run: nothing to do)."""
        await self._terminate(observed.ref.name)

    async def _terminate(self, name: str) -> None:
        running = self._running.pop(name, None)
        if running is None:
            return
        _signal_group(running.group, signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in running.processes]
        _, pending = await asyncio.wait(waits, timeout=self._stop_grace_s)
        if pending:
            log.warning(
                "replica %s did not stop within %.1fs; killing it", name, self._stop_grace_s
            )
            _signal_group(running.group, signal.SIGKILL)
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("stopped replica %s (process group %d)", name, running.group)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
