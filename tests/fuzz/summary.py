"""The hostile input suite's closing table: what became of every record it tried.

A plugin of its own (``tests/conftest.py`` registers it), like the fault suite's: under
pytest-xdist the controller, which prints, never loads ``tests/fuzz/conftest.py``, and
the suite's tests may run in several workers. Each worker hands its counts to the
controller at the end of its session; the controller adds them up, prints the table and
writes it as JSON to ``$MULAMBDA_FUZZ_RESULTS`` when that variable names a file.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.fuzz.hostile import Tally

RESULTS_ENV = "MULAMBDA_FUZZ_RESULTS"

TALLY = Tally()
"""Counts of this process's records (under xdist, the controller's sum of the workers')."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fuzz_tally"] = TALLY.to_json()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    document = getattr(node, "workeroutput", {}).get("fuzz_tally")
    if document:
        TALLY.add(Tally.from_json(document))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if getattr(terminalreporter.config, "workerinput", None) is not None:
        return  # a worker: the controller prints
    if not TALLY.topics:
        return
    terminalreporter.section("hostile input: what became of every record")
    for line in TALLY.rows():
        terminalreporter.write_line(line)
    target = os.environ.get(RESULTS_ENV)
    if target:
        with open(target, "w", encoding="utf-8") as out:
            json.dump(TALLY.to_json(), out, indent=2)
