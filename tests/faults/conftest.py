"""Fixtures of the fault suite: one private local platform per module, healed per scenario.

The platform (:class:`mulambda.harness.platform.LocalPlatform`) runs its own Kafka and
Redis on free ports under a temporary ``MULAMBDA_HOME``, so its faults never reach the
servers the other suites share. ``measure`` heals it (and proves it serves) before each
scenario, runs the scenario, prints its row of figures (``pytest -s``), writes it as
JSON to ``$MULAMBDA_FAULTS_RESULTS/<mode>-<scenario>.json`` when that variable is set, and
the whole table is printed at the end of the session. Every scenario runs once per
delivery mode of the routers (a platform each).

The suite takes minutes. ``deploy/local/test.sh`` (hence CI) runs it (it sets
``MULAMBDA_FAULTS=1``); a plain ``pytest`` skips it unless asked: ``pytest tests/faults``,
``-m faults``, or ``MULAMBDA_FAULTS=1``; ``MULAMBDA_FAULTS=0`` always skips it.
``MULAMBDA_FAULTS_KEEP_HOME=1`` keeps the platform's home (worker and broker logs) for a
post-mortem.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from mulambda.harness.load import LoadSpec
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.scenarios import FAULTS, RunOptions, ensure_serving, run_scenario
from mulambda.harness.verify import ScenarioReport, render_table
from tests.faults.summary import (
    DELIVERY_MODES,
    FAILOVER_ENV,
    FAILOVER_LEFT_OUT,
    REPORTS,
    RESULTS_ENV,
)

HERE = Path(__file__).resolve().parent

Measure = Callable[[str, LoadSpec, RunOptions], Awaitable[ScenarioReport]]


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("MULAMBDA_FAULTS") == "1":
        return True
    if os.environ.get("MULAMBDA_FAULTS") == "0":
        return False
    if "faults" in (config.option.markexpr or ""):
        return True
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


FAILOVER_MODULE = HERE / "test_failover.py"


def _failover_asked_for(config: pytest.Config) -> bool:
    """The three-broker failover runs when named (its path) or MULAMBDA_FAULTS_FAILOVER=1.

    Not by default: one xdist worker runs the whole fault suite, which is the suite's
    critical path (about 700 s of its 712 s), and the failover's two three-node
    platforms would add about 2.5 minutes to it, past the suite's 12-minute budget
    (issue 17, item 5). Left out is not skipped: the terminal summary says so and how
    to run it.
    """
    if os.environ.get(FAILOVER_ENV) == "1":
        return True
    return any(Path(arg.split("::")[0]).resolve() == FAILOVER_MODULE for arg in config.args)


FAULTS_GROUP = "faults"
"""The xdist group of every fault test, whatever its module and platform.

Under ``pytest -n N --dist loadgroup`` (deploy/local/test.sh) one worker runs the whole
fault suite, one platform after the other, while the other workers share the rest of
the suite. Two platforms side by side under load oversubscribe a 2-core machine (each
takes ~1.7 cores at 100 requests/s; the baseline's p50 rose from 35 ms alone to 169 and
444 ms side by side), and the timing targets (recovery within 5 s) then measure the
machine, not the platform.
"""


# tryfirst: xdist's own hook reads the xdist_group marks into node ids, so they must be
# on the items before it runs (else --dist loadgroup spreads the fault suite over the workers).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        if not _failover_asked_for(config):
            left_out = [item for item in items if item.path.resolve() == FAILOVER_MODULE]
            if left_out:
                config.hook.pytest_deselected(items=left_out)
                items[:] = [item for item in items if item not in left_out]
                FAILOVER_LEFT_OUT.extend(item.nodeid for item in left_out)
        for item in items:
            if HERE in item.path.resolve().parents:
                item.add_marker(pytest.mark.xdist_group(FAULTS_GROUP))
        return
    skip = pytest.mark.skip(
        reason="fault suite runs only when asked for: pytest tests/faults, -m faults or "
        "MULAMBDA_FAULTS=1 (minutes; fails until issue 10's guarantees land)"
    )
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(skip)


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=DELIVERY_MODES)
async def local_platform(request: pytest.FixtureRequest) -> AsyncIterator[LocalPlatform]:
    """2 selectors, 2 routers, 3 executor processes (9 companions), private Kafka/Redis,
    routers in the delivery mode of the parameter."""
    spec = PlatformSpec(selectors=2, routers=2, executors=3, delivery_mode=request.param)
    platform = LocalPlatform(spec, keep_home=os.environ.get("MULAMBDA_FAULTS_KEEP_HOME") == "1")
    await platform.start()  # a failed start stops what it started
    try:
        yield platform
    finally:
        await platform.stop()


def record(report: ScenarioReport, mode: str) -> None:
    """Keep ``report`` for the summary table, print its row, write it as JSON when asked."""
    REPORTS.setdefault(mode, []).append(report)
    print()  # after pytest's progress dot
    print(f"delivery mode {mode}:")
    print(render_table([report]))
    results = os.environ.get(RESULTS_ENV)
    if results:
        directory = Path(results)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{mode}-{report.scenario}.json"
        path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


@pytest.fixture
def exactly_once(local_platform: LocalPlatform) -> bool:
    """Whether this platform's routers run in the exactly-once delivery mode."""
    return local_platform.spec.delivery_mode == "exactly-once"


@pytest.fixture
def measure(local_platform: LocalPlatform) -> Measure:
    """Heal the platform, run one scenario on it, record and return its figures."""

    async def run(scenario: str, load: LoadSpec, options: RunOptions) -> ScenarioReport:
        healing = await ensure_serving(local_platform)
        report = await run_scenario(
            local_platform,
            FAULTS[scenario],
            load,
            options,
            notes=tuple(f"healed first: {line}" for line in healing),
        )
        record(report, local_platform.spec.delivery_mode)
        return report

    return run
