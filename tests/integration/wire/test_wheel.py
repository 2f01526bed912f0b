"""The built wheel carries the topic catalog and finds it when installed outside the repo.

The wheel is built from a copy of the package sources in a temporary directory (so the
checkout gets no ``build/`` or ``*.egg-info``), offline (``--no-index``,
``--no-build-isolation``: setuptools and wheel come from the venv), installed with
``pip install --no-deps --target`` into another temporary directory, and imported by a
``python -I`` run whose working directory is outside the repository and whose only
``mulambda`` is the installed one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mulambda.wire.catalog import CATALOG_FILE, generated_files, load_catalog, packaged_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

PIP = [sys.executable, "-m", "pip"]

CATALOG_FILES = sorted([CATALOG_FILE, *generated_files(load_catalog())])
"""Every file of ``mulambda/wire/topics/`` the wheel must carry."""

# Runs in the installed copy: argv[1] is the --target directory.
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mulambda
from mulambda.wire.catalog import catalog_copies, checkout_dir, load_catalog
catalog = load_catalog()
print(json.dumps({
    "module": mulambda.__file__,
    "topics": sorted(topic.value for topic in catalog.specs),
    "copies": [[c.label, str(c.directory), c.stale()] for c in catalog_copies(catalog)],
    "checkout": None if checkout_dir() is None else str(checkout_dir()),
}))
"""

GENERATE_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["mulambda", "topics", "generate", "--check"]
from mulambda.cli import main
main()
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH (it points at the checkout in test runs) and no catalog override.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MULAMBDA_TOPICS_DIR")}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "mulambda", src / "mulambda", ignore=shutil.ignore_patterns("__pycache__")
    )
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "-q"]
    built = _run([*PIP, "wheel", *offline, "-w", str(work / "dist"), str(src)], cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (work / "dist").glob("mulambda-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = _run(
        [*PIP, "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        cwd=target,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_wheel_contains_the_catalog_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packaged = {n for n in names if n.startswith("mulambda/wire/topics/")}
        assert packaged == {f"mulambda/wire/topics/{rel}" for rel in CATALOG_FILES}
        for rel in CATALOG_FILES:
            expected = (packaged_dir() / rel).read_bytes()
            assert archive.read(f"mulambda/wire/topics/{rel}") == expected, rel
        assert not [n for n in names if n.startswith("topics/")]


def test_kubernetes_is_an_extra_of_the_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    requires = [line for line in lines if line.startswith("Requires-Dist:")]
    client = [line for line in requires if "kubernetes-asyncio" in line]
    assert client == ['Requires-Dist: kubernetes-asyncio<33,>=30; extra == "kubernetes"']
    assert "Provides-Extra: kubernetes" in lines
    assert not [line for line in requires if "testcontainers" in line]


def test_installed_package_loads_its_own_catalog(installed: Path, tmp_path: Path) -> None:
    probe = _run([sys.executable, "-I", "-c", PROBE, str(installed)], cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert Path(found["module"]).is_relative_to(installed)
    assert found["topics"] == sorted(t.value for t in load_catalog().specs)
    # Outside a checkout there is only the packaged copy, and it is current.
    assert found["checkout"] is None
    assert found["copies"] == [["package", str(installed / "mulambda" / "wire" / "topics"), []]]


def test_installed_generate_check_finds_the_packaged_copy(installed: Path, tmp_path: Path) -> None:
    check = _run([sys.executable, "-I", "-c", GENERATE_CHECK, str(installed)], cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    packaged = installed / "mulambda" / "wire" / "topics"
    assert check.stdout.splitlines() == [f"package copy is up to date: {packaged}"]
