"""A private Kafka and Redis (MinIO on request) through ``deploy/local/infra.sh``.

:class:`PrivateInfra` runs the script with a ``MULAMBDA_HOME`` of its own (a temp dir)
and free ports (``MULAMBDA_KAFKA_PORT``, ``MULAMBDA_KAFKA_CONTROLLER_PORT``,
``MULAMBDA_REDIS_PORT``, ``MULAMBDA_MINIO_PORT``, ``MULAMBDA_MINIO_CONSOLE_PORT``), the
way ``tests/integration/test_infra.py`` runs a second set: restarting or wiping it never
touches the servers other sessions share. Components can be restarted, Redis with its
data (``$MULAMBDA_HOME/redis/data``) deleted in between. With ``kafka_nodes=3`` Kafka is
the script's three-node cluster (``MULAMBDA_KAFKA_NODES``; nodes ``kafka-1`` to
``kafka-3``, each on ports of its own), whose nodes can each be killed, started and
restarted.

Nothing outlives it: ``stop()`` stops the servers and removes the home, and a reaper
process (plain bash, its own session) does the same if the harness dies without
calling ``stop()``, after killing the processes whose pids the harness recorded under
``workers/`` (only those whose command line still names mulambda).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from mulambda.errors import MulambdaError
from mulambda.kafka.config import KafkaConfig
from mulambda.runtime.lifecycle import Lifecycle

log = logging.getLogger(__name__)

REPO: Final = Path(__file__).resolve().parents[2]
"""The checkout holding this package (and ``deploy/local/infra.sh``)."""
INFRA: Final = REPO / "deploy" / "local" / "infra.sh"

COMPONENTS: Final = ("kafka", "redis", "minio")
PORT_NAMES: Final = ("kafka", "kafka_controller", "redis", "minio", "minio_console")
KAFKA_NODE_COUNTS: Final = (1, 3)
"""What ``infra.sh`` runs: the single node, or the three-node cluster."""


def node_port_names(nodes: int) -> list[str]:
    """Names of the ports the nodes after the first need (the first uses ``kafka`` and
    ``kafka_controller``): ``kafka_2``, ``kafka_2_controller``, ..."""
    return [f"kafka_{n}{kind}" for n in range(2, nodes + 1) for kind in ("", "_controller")]


class PlatformError(MulambdaError):
    """The local platform could not be started, healed or driven as asked."""


def free_ports(count: int, exclude: Iterable[int] = ()) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now, none in ``exclude``."""
    taken = set(exclude)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count + len(taken) + 50):
            if len(sockets) == count:
                break
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            if int(sock.getsockname()[1]) in taken:
                sock.close()
                continue
            sockets.append(sock)
        if len(sockets) < count:
            raise PlatformError(f"could not find {count} free ports")
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def clean_environ() -> dict[str, str]:
    """This process's environment without its ``MULAMBDA_*`` settings.

    They point at the shared servers and must never reach a private instance; the
    artefact cache (Kafka jars, MinIO binary) is shared on purpose.
    """
    keep = {"MULAMBDA_CACHE_DIR"}
    return {k: v for k, v in os.environ.items() if not k.startswith("MULAMBDA_") or k in keep}


_REAPER: Final = r"""
parent=$1 home=$2 infra=$3
for ((i = 0; i < 172800; i++)); do
  kill -0 "$parent" 2>/dev/null || break
  [[ -e $home/.stopped ]] && exit 0
  sleep 1
done
[[ -e $home/.stopped ]] && exit 0
for f in "$home"/workers/*.pid; do
  [[ -e $f ]] || continue
  pid=$(<"$f")
  if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q mulambda; then
    kill -KILL "$pid" 2>/dev/null
  fi
done
bash "$infra" stop >>"$home/reaper.log" 2>&1
rm -rf "$home"
"""
"""Waits (at most two days) for the harness to exit; cleans up if it did not."""


class PrivateInfra(Lifecycle):
    """Kafka, Redis (and MinIO if named) on free ports under a private home."""

    def __init__(
        self,
        components: Iterable[str] = ("kafka", "redis"),
        *,
        ports: dict[str, int] | None = None,
        start_timeout_s: float = 180.0,
        keep_home: bool = False,
        kafka_security: str = "plaintext",
        kafka_nodes: int = 1,
        kafka_request_log: bool = False,
    ) -> None:
        """``kafka_request_log``: the broker logs every request to :attr:`request_log`
        (``deploy/local/kafka/log4j-requests.properties``; it costs broker CPU)."""
        self.components = tuple(components)
        self.kafka_request_log = kafka_request_log
        if kafka_nodes not in KAFKA_NODE_COUNTS:
            raise PlatformError(
                f"kafka_nodes must be one of {KAFKA_NODE_COUNTS}, not {kafka_nodes}"
            )
        self.kafka_nodes = kafka_nodes
        self.kafka_security = kafka_security
        """``MULAMBDA_KAFKA_SECURITY`` of the broker: plaintext, or sasl_ssl (users per role)."""
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown:
            raise PlatformError(f"unknown infrastructure {unknown}; known: {list(COMPONENTS)}")
        # Every port is set, used or not, so nothing falls back to a shared default.
        names = [*PORT_NAMES, *node_port_names(kafka_nodes)]
        self.ports = ports or dict(zip(names, free_ports(len(names)), strict=True))
        self._start_timeout_s = start_timeout_s
        self._keep_home = keep_home
        self.home: Path | None = None
        self._reaper: asyncio.subprocess.Process | None = None

    @property
    def kafka_node_names(self) -> list[str]:
        """The infra.sh components of the Kafka nodes: ``kafka``, or ``kafka-1``..."""
        if self.kafka_nodes == 1:
            return ["kafka"]
        return [f"kafka-{n}" for n in range(1, self.kafka_nodes + 1)]

    def _node_ports(self, kind: str = "") -> list[int]:
        first = self.ports["kafka" + kind]
        return [first] + [self.ports[f"kafka_{n}{kind}"] for n in range(2, self.kafka_nodes + 1)]

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of every private Kafka broker, comma-separated."""
        return ",".join(f"127.0.0.1:{port}" for port in self._node_ports())

    @property
    def redis_url(self) -> str:
        """URL of the private Redis."""
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def minio_endpoint(self) -> str:
        """``host:port`` of the private MinIO (running only when a component)."""
        return f"127.0.0.1:{self.ports['minio']}"

    def require_home(self) -> Path:
        """The private ``MULAMBDA_HOME``; PlatformError before ``start``."""
        if self.home is None:
            raise PlatformError("the private infrastructure is not started")
        return self.home

    @property
    def workers_dir(self) -> Path:
        """Where the harness records worker pids (``<name>.pid``) for the reaper."""
        return self.require_home() / "workers"

    def env(self) -> dict[str, str]:
        """Environment for ``infra.sh`` on this instance."""
        return {
            **clean_environ(),
            "MULAMBDA_HOME": str(self.require_home()),
            "MULAMBDA_KAFKA_PORT": str(self.ports["kafka"]),
            "MULAMBDA_KAFKA_CONTROLLER_PORT": str(self.ports["kafka_controller"]),
            "MULAMBDA_REDIS_PORT": str(self.ports["redis"]),
            "MULAMBDA_MINIO_PORT": str(self.ports["minio"]),
            "MULAMBDA_MINIO_CONSOLE_PORT": str(self.ports["minio_console"]),
            "MULAMBDA_START_TIMEOUT": str(int(self._start_timeout_s)),
            "MULAMBDA_KAFKA_SECURITY": self.kafka_security,
            # The secured broker's ACLs are applied by this interpreter's mulambda.
            "MULAMBDA_PYTHON": sys.executable,
            "MULAMBDA_KAFKA_NODES": str(self.kafka_nodes),
            "MULAMBDA_KAFKA_PORTS": ",".join(map(str, self._node_ports())),
            "MULAMBDA_KAFKA_CONTROLLER_PORTS": ",".join(map(str, self._node_ports("_controller"))),
            **(
                {"MULAMBDA_KAFKA_REQUEST_LOG": str(self.request_log)}
                if self.kafka_request_log
                else {}
            ),
        }

    @property
    def request_log(self) -> Path:
        """The broker's request log (written with ``kafka_request_log`` only)."""
        return self.require_home() / "kafka-requests.log"

    def kafka_user_password_file(self, user: str) -> Path:
        """Where the secured broker keeps ``user``'s SCRAM password (a role, or
        ``mulambda-broker``, its super user)."""
        return self.require_home() / "kafka" / "users" / f"{user}.password"

    def kafka_ca_file(self) -> Path:
        """The CA certificate the secured broker's certificate is signed with."""
        return self.require_home() / "kafka" / "tls" / "ca.pem"

    def kafka_as(
        self, user: str, *, password: str | None = None, request_timeout_s: float = 10.0
    ) -> KafkaConfig:
        """Client settings of ``user`` on the secured broker (its own password unless
        ``password`` is given)."""
        if self.kafka_security != "sasl_ssl":
            raise PlatformError("the private broker is not secured (kafka_security='sasl_ssl')")
        secret = password
        if secret is None:
            secret = self.kafka_user_password_file(user).read_text(encoding="utf-8").strip()
        return KafkaConfig(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=secret,
            ssl_cafile=str(self.kafka_ca_file()),
            request_timeout_s=request_timeout_s,
            client_id=f"mulambda-{user}",
        )

    async def start(self) -> None:
        """Create the home, start the reaper, then every component; ready on return."""
        if self.home is not None:
            return
        self.home = Path(tempfile.mkdtemp(prefix="mulambda-platform-"))
        self.workers_dir.mkdir()
        try:
            await self._start_reaper()
            await self.run("start", *self.components)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every component and remove the home; safe to call twice."""
        home = self.home
        if home is None:
            return
        try:
            with contextlib.suppress(PlatformError):
                await self.run("stop", timeout_s=120.0)
        finally:
            (home / ".stopped").touch()
            await self._stop_reaper()
            self.home = None
            if self._keep_home:
                log.warning("platform home kept: %s", home)
            else:
                shutil.rmtree(home, ignore_errors=True)

    def _check(self, component: str) -> None:
        nodes = self.kafka_node_names if "kafka" in self.components else []
        if component not in self.components and (self.kafka_nodes == 1 or component not in nodes):
            raise PlatformError(f"{component} is not part of this infrastructure")

    async def kill(self, component: str) -> None:
        """``infra.sh kill COMPONENT``: SIGKILL, data kept (a Kafka node, say ``kafka-2``)."""
        self._check(component)
        await self.run("kill", component)

    async def start_component(self, component: str) -> None:
        """``infra.sh start COMPONENT``: start it again (after :meth:`kill`), ready on return."""
        self._check(component)
        await self.run("start", component)

    async def restart(self, component: str, *, wipe: bool = False) -> None:
        """``infra.sh restart COMPONENT``; with ``wipe``, its data is deleted in between."""
        self._check(component)
        if not wipe:
            await self.run("restart", component)
            return
        await self.run("stop", component)
        data = self.require_home() / component / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        await self.run("start", component)

    async def running(self) -> bool:
        """Whether ``infra.sh status`` says every component runs."""
        code, _ = await self._infra("status", *self.components, timeout_s=30.0)
        return code == 0

    async def run(self, command: str, *components: str, timeout_s: float | None = None) -> None:
        """``infra.sh COMMAND COMPONENT...``; PlatformError with its output on failure."""
        code, output = await self._infra(
            command, *components, timeout_s=timeout_s or self._start_timeout_s + 60
        )
        if code != 0:
            raise PlatformError(
                f"infra.sh {command} {' '.join(components)} failed ({code}):\n{output[-3000:]}"
            )

    async def _infra(self, command: str, *components: str, timeout_s: float) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(INFRA),
            command,
            *components,
            env=self.env(),
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return 124, f"infra.sh {command} timed out after {timeout_s:g}s"
        text = out.decode(errors="replace")
        with (self.require_home() / "infra.log").open("a") as handle:
            handle.write(f"=== infra.sh {command} {' '.join(components)}\n{text}")
        return process.returncode or 0, text

    async def _start_reaper(self) -> None:
        self._reaper = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            _REAPER,
            "reaper",
            str(os.getpid()),
            str(self.require_home()),
            str(INFRA),
            env=self.env(),
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    async def _stop_reaper(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is None or reaper.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            reaper.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reaper.wait(), 5)
