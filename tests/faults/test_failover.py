"""Production's topology under a broker crash (issue 17, item 6).

Production runs three brokers (replication 3, ``min.insync.replicas`` 2), where losing
one is a failover, not an outage. This module's platform is the fault suite's, on a
three-node KRaft cluster (``infra.sh`` with ``MULAMBDA_KAFKA_NODES=3``; every topic,
internal ones included, replicated on all three). At 100 requests/s the node leading the
most partitions is killed with -9 and restarted 8 s later, under the same load.

Targets, in both delivery modes: nothing lost, no request answered twice under
read_committed, no error result at all (deadlines 10 s: a failover must be invisible to
clients but as added latency), and every request partition answered ok again within
5 s of the kill. The clients follow the leaders and coordinators the cluster moves;
aiokafka's producer needs mulambda.kafka.coordinators for its coordinators.

``MULAMBDA_FAULTS_FAILOVER_RUNS=N`` repeats the scenario N times on each platform.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from mulambda.harness.load import LoadSpec
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.scenarios import FAULTS, RunOptions, ensure_serving, run_scenario
from mulambda.harness.verify import ScenarioReport, render_table
from tests.faults.conftest import record
from tests.faults.summary import DELIVERY_MODES

RATE = 100.0
DEADLINE_S = 10.0
AROUND_A_FAILOVER = LoadSpec(rate=RATE, duration_s=60.0, deadline_s=DEADLINE_S)
"""An upper bound: the load stops 15 s after the killed node is back."""
OPTIONS = RunOptions(fault_at_s=6.0, margin_s=3.0, load_after_fault_s=15.0, premature_left_s=5.0)
RECOVERY_S = 5.0
RUNS = int(os.environ.get("MULAMBDA_FAULTS_FAILOVER_RUNS", "1"))


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=DELIVERY_MODES)
async def three_broker_platform(request: pytest.FixtureRequest) -> AsyncIterator[LocalPlatform]:
    """The fault suite's platform (2 selectors, 2 routers, 3 executor processes) on three
    Kafka nodes, routers in the delivery mode of the parameter."""
    spec = PlatformSpec(
        selectors=2, routers=2, executors=3, delivery_mode=request.param, kafka_nodes=3
    )
    platform = LocalPlatform(spec, keep_home=os.environ.get("MULAMBDA_FAULTS_KEEP_HOME") == "1")
    await platform.start()  # a failed start stops what it started
    try:
        yield platform
    finally:
        await platform.stop()


def _misses(report: ScenarioReport) -> list[str]:
    f = report.figures
    misses = []
    if f.lost:
        misses.append(f"{f.lost} of {f.sent} requests lost ({f.late} answered too late)")
    if f.duplicates:
        misses.append(f"{f.duplicates} requests answered more than once (read_committed)")
    if f.without_request_id:
        misses.append(f"{f.without_request_id} results without a request_id")
    if f.errors:
        misses.append(f"{f.errors} error results")
    if not (f.recovered and (f.recovery_s or 0.0) <= RECOVERY_S):
        got = f"{f.recovery_s:.1f} s" if f.recovered else "never"
        misses.append(f"recovery {got}, target <= {RECOVERY_S:g} s")
    return misses


@pytest.mark.timeout(420)
@pytest.mark.parametrize("run", range(1, RUNS + 1))
async def test_broker_failover(three_broker_platform: LocalPlatform, run: int) -> None:
    """kill -9 of the busiest of three brokers, its restart 8 s later, at 100 requests/s."""
    platform = three_broker_platform
    healing = await ensure_serving(platform)
    kills = len(platform.kill_history)
    report = await run_scenario(
        platform,
        FAULTS["broker-failover"],
        AROUND_A_FAILOVER,
        OPTIONS,
        notes=(
            *(f"healed first: {line}" for line in healing),
            f"run {run} of {RUNS}",
        ),
    )
    killed = platform.kill_history[kills:]
    report = replace(report, notes=(*report.notes, f"killed {', '.join(killed) or '-'}"))
    record(report, platform.spec.delivery_mode)
    assert killed, "no broker was killed"
    misses = _misses(report)
    assert not misses, "broker-failover: " + "; ".join(misses) + "\n" + render_table([report])
