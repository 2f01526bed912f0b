"""deploy/local/infra.sh: start, status, stop, restart, and a port already in use.

Runs a second, private set of servers (own MULAMBDA_HOME, free ports) so the session's
servers are untouched.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mulambda.harness.infra import free_port
from tests.conftest import INFRA, REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def private_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "MULAMBDA_HOME": str(tmp_path / "home"),
        "MULAMBDA_KAFKA_PORT": str(free_port()),
        "MULAMBDA_KAFKA_CONTROLLER_PORT": str(free_port()),
        "MULAMBDA_REDIS_PORT": str(free_port()),
        "MULAMBDA_MINIO_PORT": str(free_port()),
        "MULAMBDA_MINIO_CONSOLE_PORT": str(free_port()),
        "MULAMBDA_START_TIMEOUT": "90",
    }
    yield env
    subprocess.run(["bash", str(INFRA), "stop"], env=env, check=False, timeout=120)


def _infra(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _pids(env: dict[str, str]) -> dict[str, int]:
    home = Path(env["MULAMBDA_HOME"])
    return {
        name: int((home / name / f"{name}.pid").read_text().strip())
        for name in ("kafka", "redis", "minio")
        if (home / name / f"{name}.pid").exists()
    }


def _alive(pid: int) -> bool:
    # A stopped server may linger as a zombie until this container's init reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_status_stop_restart(private_env: dict[str, str]) -> None:
    started = _infra(private_env, "start")
    assert started.returncode == 0, started.stderr
    assert "MULAMBDA_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in started.stdout
    status = _infra(private_env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running") == 3
    pids = _pids(private_env)
    assert set(pids) == {"kafka", "redis", "minio"}
    client = redis.Redis(port=int(private_env["MULAMBDA_REDIS_PORT"]))
    assert client.ping()
    client.close()

    again = _infra(private_env, "start")  # idempotent: nothing new is started
    assert again.returncode == 0, again.stderr
    assert _pids(private_env) == pids

    stopped = _infra(private_env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_alive(pid) for pid in pids.values())
    assert _infra(private_env, "status").returncode == 3
    assert _infra(private_env, "stop").returncode == 0  # stopping twice is fine

    restarted = _infra(private_env, "restart", "redis")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = _pids(private_env)["redis"]
    assert new_pid != pids["redis"]
    assert _alive(new_pid)


def test_port_in_use_is_reported(private_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(private_env["MULAMBDA_REDIS_PORT"])))
        squatter.listen()
        result = _infra(private_env, "start", "redis")
    assert result.returncode != 0
    assert private_env["MULAMBDA_REDIS_PORT"] in result.stderr
    assert "in use" in result.stderr.lower() or "taken" in result.stderr.lower()


def test_stop_leaves_foreign_processes_alone(private_env: dict[str, str]) -> None:
    """A stale pid file pointing at someone else's process must not kill it."""
    home = Path(private_env["MULAMBDA_HOME"]) / "redis"
    home.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (home / "redis.pid").write_text(f"{bystander.pid}\n")
        _infra(private_env, "stop", "redis")
        assert bystander.poll() is None, "infra.sh stop killed a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()


def test_installed_names_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "MULAMBDA_CACHE_DIR": str(tmp_path / "cache")}
    missing = subprocess.run(
        ["bash", str(INFRA), "installed", "kube", "minio"],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "kube: not installed" in missing.stderr
    assert "minio: not installed" in missing.stderr
    kubectl = subprocess.run(
        ["bash", str(INFRA), "kubectl-bin"],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert kubectl.returncode == 1
    assert "install kube" in kubectl.stderr
    # The session's own cache: what the kube_api fixture relies on.
    if subprocess.run(["bash", str(INFRA), "installed", "kube"], check=False).returncode == 0:
        path = subprocess.run(
            ["bash", str(INFRA), "kubectl-bin"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert os.access(path, os.X_OK)


@pytest.fixture
def cluster_env(private_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The private set with three Kafka nodes; stopped with these settings (the nodes are
    what private_env's own stop would not know of)."""
    ports = [free_port() for _ in range(6)]
    env = {
        **private_env,
        "MULAMBDA_KAFKA_NODES": "3",
        "MULAMBDA_KAFKA_PORTS": ",".join(map(str, ports[:3])),
        "MULAMBDA_KAFKA_CONTROLLER_PORTS": ",".join(map(str, ports[3:])),
    }
    yield env
    subprocess.run(["bash", str(INFRA), "stop"], env=env, check=False, timeout=120)


def test_three_kafka_nodes_start_fail_and_come_back_one_at_a_time(
    cluster_env: dict[str, str],
) -> None:
    """MULAMBDA_KAFKA_NODES=3: three KRaft nodes, each killed and started on its own."""
    env = cluster_env
    ports = [
        int(p)
        for p in (env["MULAMBDA_KAFKA_PORTS"] + "," + env["MULAMBDA_KAFKA_CONTROLLER_PORTS"]).split(
            ","
        )
    ]
    started = _infra(env, "start", "kafka")
    assert started.returncode == 0, started.stderr
    bootstrap = ",".join(f"127.0.0.1:{p}" for p in ports[:3])
    assert f"MULAMBDA_KAFKA_BOOTSTRAP_SERVERS={bootstrap.replace(',', chr(92) + ',')}" in (
        started.stdout
    )
    home = Path(env["MULAMBDA_HOME"])
    config = (home / "kafka-2" / "server.properties").read_text()
    assert "node.id=2\n" in config
    assert "default.replication.factor=3\n" in config
    assert "min.insync.replicas=2\n" in config
    assert "transaction.state.log.replication.factor=3\n" in config
    voters = ",".join(f"{n}@127.0.0.1:{p}" for n, p in enumerate(ports[3:], 1))
    assert f"controller.quorum.voters={voters}\n" in config
    assert not (home / "kafka").exists()  # the single node's state is not touched
    status = _infra(env, "status", "kafka")
    assert status.returncode == 0, status.stdout
    assert [line.split()[0] for line in status.stdout.splitlines()] == [
        "kafka-1",
        "kafka-2",
        "kafka-3",
    ]
    pid = int((home / "kafka-2" / "kafka-2.pid").read_text())

    killed = _infra(env, "kill", "kafka-2")
    assert killed.returncode == 0, killed.stderr
    assert not _alive(pid)
    status = _infra(env, "status", "kafka")
    assert status.returncode == 3
    assert "kafka-2 stopped" in " ".join(status.stdout.split())
    again = _infra(env, "start", "kafka-2")  # rejoins the two that kept running
    assert again.returncode == 0, again.stderr
    assert _infra(env, "status", "kafka").returncode == 0
    assert _infra(env, "start", "kafka-4").returncode != 0  # no such node

    stopped = _infra(env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _infra(env, "status", "kafka").returncode == 3
