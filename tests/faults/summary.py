"""The fault suite's terminal summary: a table of figures per delivery mode.

A plugin of its own (``tests/conftest.py`` registers it), not part of
``tests/faults/conftest.py``: under pytest-xdist the controller collects nothing, so it
never loads that conftest, yet it is the one that prints. Workers hand their tables and
the failover tests they left out to the controller at the end of their session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mulambda.harness.verify import ScenarioReport, render_table

DELIVERY_MODES = ("at-least-once", "exactly-once")
"""Every scenario runs in each delivery mode of the routers."""
RESULTS_ENV = "MULAMBDA_FAULTS_RESULTS"
FAILOVER_ENV = "MULAMBDA_FAULTS_FAILOVER"

REPORTS: dict[str, list[ScenarioReport]] = {}
"""Every scenario measured in this process by delivery mode."""
FAILOVER_LEFT_OUT: list[str] = []
"""The failover tests this process's collection left out."""
_FROM_WORKERS: dict[str, str] = {}
"""Under xdist, the controller's copy of the workers' tables, by delivery mode."""
_LEFT_OUT_BY_WORKERS: set[str] = set()


def _own_tables() -> dict[str, str]:
    return {mode: render_table(reports) for mode, reports in REPORTS.items()}


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_tables"] = _own_tables()
        workeroutput["failover_left_out"] = list(FAILOVER_LEFT_OUT)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    output = getattr(node, "workeroutput", {})
    _FROM_WORKERS.update(output.get("fault_tables", {}))
    _LEFT_OUT_BY_WORKERS.update(output.get("failover_left_out", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if getattr(terminalreporter.config, "workerinput", None) is not None:
        return  # a worker: the controller prints
    left_out = set(FAILOVER_LEFT_OUT) | _LEFT_OUT_BY_WORKERS
    if left_out:
        terminalreporter.section("fault suite: left out")
        terminalreporter.write_line(
            f"{len(left_out)} three-broker failover tests (tests/faults/test_failover.py)"
            f" were left out; run them with {FAILOVER_ENV}=1 or by path"
        )
    tables = _own_tables() | _FROM_WORKERS
    ordered = [(mode, tables[mode]) for mode in DELIVERY_MODES if mode in tables]
    if not ordered:
        return
    terminalreporter.section("fault suite figures")
    text = "\n".join(f"delivery mode {mode}:\n{table}" for mode, table in ordered)
    terminalreporter.write_line(text)
    results = os.environ.get(RESULTS_ENV)
    if results:
        (Path(results) / "table.txt").write_text(text + "\n")
