"""The README's walkthrough, run AS WRITTEN against a private local platform.

Every fenced block preceded by ``<!-- readme-test -->`` runs, in README order, in ONE bash
process (``set -euo pipefail``; ``python`` blocks through the venv's python), from a
throwaway checkout: ``deploy`` and ``pyproject.toml`` link to this repository, ``.venv``
to the venv running the tests, ``.mulambda`` is a fresh directory. Kafka, Redis, MinIO,
the workers and MLServer get free ports, so the walkthrough's ``deploy/local/up.sh`` and
``down.sh`` never touch the shared servers. Each block's output is checked.

Cleanup on any failure: the script's process group (the README's background companion)
is killed, then ``down.sh`` stops the workers, MLServer and the private infrastructure.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from mulambda.harness.infra import free_port
from tests.conftest import INFRA, REPO

pytestmark = pytest.mark.integration

README: Final = REPO / "README.md"
MARK: Final = "<!-- readme-test -->"
SEPARATOR: Final = "@@readme-block"
SCRIPT_TIMEOUT_S: Final = 900
PORT_VARIABLES: Final = (
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "REDIS_PORT",
    "MINIO_PORT",
    "MINIO_CONSOLE_PORT",
    "EXECUTOR_PORT",
    "SELECTOR_METRICS_PORT",
    "ROUTER_METRICS_PORT",
    "LAUNCHER_METRICS_PORT",
    "PROBE_PORT",
    "MLSERVER_PORT",
    "MLSERVER_GRPC_PORT",
    "MLSERVER_METRICS_PORT",
)
# Inherited MULAMBDA_* variables that may stay: where downloads are cached, not where
# anything runs.
KEPT_VARIABLES: Final = ("MULAMBDA_CACHE_DIR", "MULAMBDA_MLSERVER_PYTHON")
SYNTHETIC_IDS: Final = ("local-FastBad", "local-MidOK", "local-SlowGood")


@dataclass(frozen=True)
class Block:
    """One marked fenced block: its language and text."""

    language: str
    text: str


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks(markdown: str) -> list[Block]:
    """The fenced blocks that directly follow a ``<!-- readme-test -->`` line."""
    blocks = []
    for match in _FENCE.finditer(markdown):
        before = markdown[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() == MARK:
            blocks.append(Block(match.group(1), match.group(2)))
    return blocks


def script_of(blocks: list[Block]) -> str:
    """One bash script running every block, a separator line before each."""
    parts = ["set -euo pipefail"]
    for index, block in enumerate(blocks):
        parts.append(f"printf '\\n{SEPARATOR} %d@@\\n' {index}")
        if block.language == "python":
            parts.append(f".venv/bin/python - <<'README_PY'\n{block.text}README_PY")
        else:
            assert block.language in ("sh", "bash"), f"cannot run a {block.language!r} block"
            parts.append(block.text)
    return "\n".join(parts) + "\n"


def split_outputs(stdout: str) -> dict[int, str]:
    """Each block's output, by index."""
    pieces = re.split(rf"^{SEPARATOR} (\d+)@@$", stdout, flags=re.MULTILINE)
    return {int(pieces[i]): pieces[i + 1] for i in range(1, len(pieces) - 1, 2)}


def first_json(output: str) -> dict[str, Any]:
    """The first JSON object printed on a line of its own (``mulambda infer``)."""
    start = re.search(r"^\{", output, re.MULTILINE)
    assert start is not None, f"no JSON object in:\n{output}"
    found, _ = json.JSONDecoder().raw_decode(output[start.start() :])
    assert isinstance(found, dict)
    return found


def test_readme_blocks_are_found_after_their_mark() -> None:
    markdown = (
        "text\n<!-- readme-test -->\n```sh\necho one\n```\n\n```sh\necho skipped\n```\n"
        "<!-- readme-test -->\n```python\nprint(2)\n```\n"
    )
    assert readme_blocks(markdown) == [Block("sh", "echo one\n"), Block("python", "print(2)\n")]
    script = script_of(readme_blocks(markdown))
    assert "echo skipped" not in script
    assert ".venv/bin/python - <<'README_PY'\nprint(2)\nREADME_PY" in script
    assert split_outputs(f"x\n{SEPARATOR} 0@@\none\n{SEPARATOR} 1@@\n2\n") == {
        0: "\none\n",
        1: "\n2\n",
    }


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A throwaway checkout and the private environment to run it with; whatever it
    started is stopped afterwards (``down.sh``, which also stops the infrastructure)."""
    venv = Path(sys.prefix)
    stamp = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    installed = [s.name for s in venv.glob(f".mulambda-installed-{stamp}-*")]
    if not any("-dev" in name.removeprefix(f".mulambda-installed-{stamp}") for name in installed):
        # up.sh would `pip install -e` this checkout into the shared venv.
        pytest.fail(f"{venv} is not installed for this pyproject.toml (deploy/local/up.sh once)")
    found = subprocess.run(
        ["bash", str(INFRA), "mlserver-bin"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.fail("MLServer is not installed; run: bash deploy/local/infra.sh install mlserver")
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("deploy", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(venv)
    (root / ".mulambda").mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MULAMBDA_") or k in KEPT_VARIABLES
    }
    env.update({f"MULAMBDA_{name}": str(free_port()) for name in PORT_VARIABLES})
    env.update(
        {
            "MULAMBDA_HOME": str(root / ".mulambda"),
            "MULAMBDA_WITH_MLSERVER": "1",
            "MULAMBDA_START_TIMEOUT": "120",
            "MULAMBDA_UP_TIMEOUT": "180",
            # The workers and the README's commands run this checkout's code.
            "PYTHONPATH": str(REPO),
        }
    )
    try:
        yield root, env
    finally:
        subprocess.run(
            ["bash", "deploy/local/down.sh"], cwd=root, env=env, check=False, timeout=180
        )


def _run(root: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: background jobs included
    )
    try:
        stdout, stderr = process.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\n(timed out after {SCRIPT_TIMEOUT_S}s)"
    finally:
        # Whatever the walkthrough left in the background (a companion, on failure).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_the_walkthrough_runs_as_written(checkout: tuple[Path, dict[str, str]]) -> None:
    root, env = checkout
    blocks = readme_blocks(README.read_text())
    assert len(blocks) == 9, "the README's marked blocks changed: update this test"
    done = _run(root, env, script_of(blocks))
    report = f"stdout:\n{done.stdout}\nstderr (last 4000 chars):\n{done.stderr[-4000:]}"
    assert done.returncode == 0, report
    out = split_outputs(done.stdout)
    assert sorted(out) == list(range(len(blocks))), report

    # deploy/local/up.sh: the synthetic executors and the real model
    assert "MuLambda is running" in out[0], report
    assert "executor local-wine" in out[0], report

    # mulambda infer on the synthetic models: two confidences
    synthetic = first_json(out[1])
    assert synthetic["status"] == "ok", synthetic
    assert synthetic["executor_id"] in SYNTHETIC_IDS
    assert len(synthetic["output"]["predictions"]) == 2

    # the SDK against the real model: 3 probabilities per row, the right classes
    line = next(row for row in out[2].splitlines() if row.startswith("local-wine "))
    probabilities = ast.literal_eval(line.removeprefix("local-wine "))
    assert [len(row) for row in probabilities] == [3, 3]
    assert all(abs(sum(row) - 1) < 1e-6 for row in probabilities)
    assert [row.index(max(row)) for row in probabilities] == [0, 2]

    # train and upload wine-lab
    assert "uploaded wine-lab version 1:" in out[3], report
    listed = out[3].splitlines()
    assert "wine-lab\t1" in listed, out[3]
    assert "wine\t1" in listed, out[3]  # the one up.sh uploaded

    # MLServer loaded it
    assert "wine-lab ready" in out[4], report

    # the companion registered it under its own traits
    assert any(
        row.startswith("lab-wine\twine-lab\t1\tclassification/wine-13/lab-probs-3\t0.95\t")
        for row in out[5].splitlines()
    ), out[5]

    # mulambda infer with its traits and an OIP body: a [2, 3] probability tensor
    lab = first_json(out[6])
    assert lab["status"] == "ok", lab
    assert lab["executor_id"] == "lab-wine"
    (tensor,) = lab["output"]["outputs"]
    assert tensor["name"] == "predict_proba"
    assert tensor["shape"] == [2, 3]
    assert len(tensor["data"]) == 6

    # retired: deregistered, the real model still there
    ids = [row.split("\t", 1)[0] for row in out[7].splitlines() if "\t" in row]
    assert "lab-wine" not in ids, out[7]
    assert "local-wine" in ids, out[7]

    # down.sh stopped every worker
    assert not list((root / ".mulambda" / "workers").glob("*.pid")), out[8]
