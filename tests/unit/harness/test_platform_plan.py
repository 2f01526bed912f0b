"""What the local platform would launch, checked without launching anything."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mulambda.emulator.profiles import load_profiles, profile_by_name
from mulambda.harness.infra import REPO, PlatformError, PrivateInfra, free_ports
from mulambda.harness.load import LoadSpec
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.scenarios import FAULTS, PROBE_LOAD, serves, slow_delay_ms
from mulambda.harness.verify import COMMITTED, UNCOMMITTED, Ledger, SentRequest


def _value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> LocalPlatform:
    # The caller's settings point at shared servers; none may reach a worker.
    monkeypatch.setenv("MULAMBDA_REDIS_URL", "redis://shared:6379/0")
    monkeypatch.setenv("MULAMBDA_KAFKA_BOOTSTRAP_SERVERS", "shared:9092")
    monkeypatch.setenv("MULAMBDA_CACHE_DIR", "/cache")
    platform = LocalPlatform(PlatformSpec(), python="/venv/bin/python")
    platform.plan()
    return platform


def test_the_plan_names_every_worker_with_ports_of_its_own(planned: LocalPlatform) -> None:
    kinds = [w.kind for w in planned.workers.values()]
    assert kinds.count("executor") == 3
    assert kinds.count("companion") == 9
    assert kinds.count("selector") == 2
    assert kinds.count("router") == 2
    ports = [w.port for w in planned.workers.values() if w.port is not None]
    assert planned.infra is not None
    ports += list(planned.infra.ports.values())
    assert len(ports) == len(set(ports)) == 3 + 2 + 2 + 5
    assert planned.bootstrap_servers == f"127.0.0.1:{planned.infra.ports['kafka']}"
    assert len(set(planned.spec.executor_ids())) == 9
    planned.plan()  # a second plan changes nothing
    assert len(planned.workers) == 16


def test_executors_serve_every_model_at_time_scale_zero(planned: LocalPlatform) -> None:
    worker = planned.worker("executor-1")
    argv, env = planned.command(worker)
    assert argv[:5] == ["/venv/bin/python", "-m", "mulambda", "executor", "serve"]
    assert _value(argv, "--port") == str(worker.port)
    assert _value(argv, "--time-scale") == "0"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--synthetic"] == [
        "FastBad",
        "MidOK",
        "SlowGood",
    ]
    assert "--profiles-file" not in argv
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)


def test_slow_executors_serve_the_same_models_from_a_fixed_delay_profile(
    planned: LocalPlatform, tmp_path: Path
) -> None:
    assert planned.infra is not None
    planned.infra.home = tmp_path
    worker = planned.worker("executor-0")
    worker.delay_ms = 12800
    argv, _ = planned.command(worker)
    path = Path(_value(argv, "--profiles-file"))
    assert path.parent == tmp_path
    assert _value(argv, "--time-scale") == "1"
    planned._write_slow_profiles(12800)
    profiles = {p.name: p for p in load_profiles(path)}
    assert list(profiles) == ["FastBad", "MidOK", "SlowGood"]
    assert all(p.delay_s(5, 7, random.Random(1)) == 12.8 for p in profiles.values())
    assert profiles["MidOK"].confidences == profile_by_name("MidOK").confidences


def test_companions_register_distinct_ids_against_their_own_process(
    planned: LocalPlatform,
) -> None:
    argv, env = planned.command(planned.worker("companion-1-MidOK"))
    assert argv[3] == "companion"
    assert _value(argv, "--executor-id") == "bench-e1-MidOK"
    assert _value(argv, "--endpoint") == f"http://127.0.0.1:{planned.worker('executor-1').port}"
    assert _value(argv, "--model-name") == "MidOK"
    assert _value(argv, "--accuracy") == "0.85"
    assert _value(argv, "--heartbeat-interval") == "2"
    assert (_value(argv, "--model-type"), _value(argv, "--input-format")) == (
        "classification",
        "feature",
    )
    assert env["MULAMBDA_METRICS_PORT"] == "0"


def test_routers_and_selectors_get_ids_and_metrics_ports_and_only_private_settings(
    planned: LocalPlatform,
) -> None:
    router = planned.worker("router-1")
    argv, env = planned.command(router)
    assert _value(argv, "--router-id") == "bench-router-1"
    assert _value(argv, "--concurrency") == "64"
    assert _value(argv, "--selection-timeout") == "2"
    assert env["MULAMBDA_METRICS_PORT"] == str(router.port)
    assert env["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"] == planned.bootstrap_servers
    assert planned.infra is not None
    assert env["MULAMBDA_REDIS_URL"] == f"redis://127.0.0.1:{planned.infra.ports['redis']}/0"
    assert env["MULAMBDA_CACHE_DIR"] == "/cache"
    selector = planned.worker("selector-0")
    argv, env = planned.command(selector)
    assert _value(argv, "--selector-id") == "bench-selector-0"
    assert env["MULAMBDA_METRICS_PORT"] == str(selector.port)
    assert "shared" not in " ".join(env.values())


def test_unknown_workers_and_infrastructure_are_refused(planned: LocalPlatform) -> None:
    with pytest.raises(PlatformError, match="no worker 'router-7'"):
        planned.worker("router-7")
    assert planned.infra is not None
    with pytest.raises(PlatformError, match="not started"):
        planned.infra.env()
    with pytest.raises(PlatformError, match="unknown infrastructure"):
        PrivateInfra(["kafka", "zookeeper"])


def test_the_private_infrastructure_gets_its_own_home_and_every_port(
    planned: LocalPlatform, tmp_path: Path
) -> None:
    infra = planned.infra
    assert infra is not None
    infra.home = tmp_path
    env = infra.env()
    assert env["MULAMBDA_HOME"] == str(tmp_path)
    for name, variable in [
        ("kafka", "MULAMBDA_KAFKA_PORT"),
        ("kafka_controller", "MULAMBDA_KAFKA_CONTROLLER_PORT"),
        ("redis", "MULAMBDA_REDIS_PORT"),
        ("minio", "MULAMBDA_MINIO_PORT"),
        ("minio_console", "MULAMBDA_MINIO_CONSOLE_PORT"),
    ]:
        assert env[variable] == str(infra.ports[name])
    assert "MULAMBDA_REDIS_URL" not in env  # the shared server's, set by the fixture
    assert env["MULAMBDA_CACHE_DIR"] == "/cache"
    assert infra.workers_dir == tmp_path / "workers"


def test_free_ports_are_distinct_and_avoid_the_excluded() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 <= p <= 65535 for p in ports)
    more = free_ports(20, exclude=ports)
    assert not set(more) & set(ports)


def test_slow_executors_serve_a_tenth_of_the_load() -> None:
    spec = PlatformSpec(routers=2, router_concurrency=64)
    delay_ms = slow_delay_ms(spec, LoadSpec(rate=100.0))
    assert delay_ms == pytest.approx(12_800)
    # Calls the routers can complete per second at that delay: a tenth of the rate.
    assert spec.routers * spec.router_concurrency / (delay_ms / 1000) == pytest.approx(10.0)
    assert slow_delay_ms(spec, LoadSpec(rate=200.0), factor=5) == pytest.approx(3_200)


def test_the_scenarios_are_the_issues_faults() -> None:
    assert list(FAULTS) == [
        "baseline",
        "router-kill",
        "router-zombie",
        "selector-kill",
        "executor-kill",
        "broker-restart",
        "broker-outage",
        "redis-wipe",
        "slow-executors",
        "broker-failover",
    ]
    assert FAULTS["baseline"].inject is None
    assert FAULTS["baseline"].condition is None
    assert FAULTS["slow-executors"].condition is not None
    assert all(
        f.inject is not None for n, f in FAULTS.items() if n not in ("baseline", "slow-executors")
    )
    # The failover's second step restarts the killed node under the same load; it is no
    # outage (two brokers serve throughout), so no grace after it.
    failover = FAULTS["broker-failover"]
    assert failover.then is not None
    assert failover.then_after_s > 0
    assert failover.outage_grace_s is None
    assert [n for n, f in FAULTS.items() if f.then is not None] == ["broker-failover"]


def test_a_three_broker_platform_gets_every_node_port_and_replicates_its_topics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MULAMBDA_KAFKA_BOOTSTRAP_SERVERS", "shared:9092")
    platform = LocalPlatform(PlatformSpec(kafka_nodes=3), python="/venv/bin/python")
    platform.plan()
    infra = platform.infra
    assert infra is not None
    infra.home = tmp_path
    env = infra.env()
    kafka = env["MULAMBDA_KAFKA_PORTS"].split(",")
    controllers = env["MULAMBDA_KAFKA_CONTROLLER_PORTS"].split(",")
    assert env["MULAMBDA_KAFKA_NODES"] == "3"
    assert len(kafka) == len(controllers) == 3
    assert kafka[0] == env["MULAMBDA_KAFKA_PORT"]
    assert controllers[0] == env["MULAMBDA_KAFKA_CONTROLLER_PORT"]
    worker_ports = [w.port for w in platform.workers.values() if w.port is not None]
    every = [*worker_ports, *infra.ports.values()]
    assert len(every) == len(set(every)) == 3 + 2 + 2 + 5 + 4
    assert platform.bootstrap_servers == ",".join(f"127.0.0.1:{p}" for p in kafka)
    _, worker_env = platform.command(platform.worker("router-0"))
    assert worker_env["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"] == platform.bootstrap_servers
    assert platform.topics_apply_argv()[-2:] == ["--replication-factor", "3"]
    assert infra.kafka_node_names == ["kafka-1", "kafka-2", "kafka-3"]
    with pytest.raises(PlatformError, match="kafka_nodes"):
        PrivateInfra(kafka_nodes=2)


def test_a_one_broker_platform_applies_topics_and_runs_infra_sh_as_before(
    planned: LocalPlatform, tmp_path: Path
) -> None:
    assert planned.topics_apply_argv() == ["/venv/bin/python", "-m", "mulambda", "topics", "apply"]
    infra = planned.infra
    assert infra is not None
    infra.home = tmp_path
    env = infra.env()
    assert env["MULAMBDA_KAFKA_NODES"] == "1"
    assert env["MULAMBDA_KAFKA_PORTS"] == env["MULAMBDA_KAFKA_PORT"]
    assert infra.kafka_node_names == ["kafka"]


async def test_only_the_clusters_nodes_can_be_killed_one_by_one(planned: LocalPlatform) -> None:
    assert planned.infra is not None
    with pytest.raises(PlatformError, match="kafka-2 is not part"):
        await planned.infra.kill("kafka-2")
    assert await planned.busiest_broker() == "kafka"


def test_a_probe_serves_only_when_every_request_was_answered_ok_once() -> None:
    def figures(results: list[list[str]]) -> bool:
        ledger = Ledger()
        for n, statuses in enumerate(results):
            ledger.record_sent(SentRequest(f"m{n}", f"c{n}", 0.0, PROBE_LOAD.deadline_s))
            for status in statuses:
                for reader in (COMMITTED, UNCOMMITTED):
                    ledger.record_result(reader, {"correlation_id": f"c{n}", "status": status}, 1.0)
        return serves(ledger.figures(margin_s=1.0))

    assert figures([["ok"], ["ok"]])
    assert not figures([["ok"], ["error"]])
    assert not figures([["ok"], []])
    assert not figures([["ok"], ["ok", "ok"]])
    assert not figures([])
