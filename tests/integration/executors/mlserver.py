"""A real MLServer for tests: where its binary is, a wine model trained now, the process.

MLServer is a server, not a dependency of mulambda: ``deploy/local/infra.sh install``
puts it in a venv of its own (``infra.sh mlserver-bin`` prints its ``mlserver``), or
``MULAMBDA_MLSERVER_BIN`` names one. The wine model is trained by that venv's Python, so
the pickle always matches the scikit-learn MLServer loads it with. :class:`MLServer`
runs ``mlserver start`` on free 127.0.0.1 ports with ``parallel_workers: 0`` (its
parallel workers die at start with uvloop 0.23) and stops it, by its own pid only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from mulambda.harness.infra import free_port
from mulambda.models.store import ModelStore
from tests.conftest import Infra, remove_bucket

REPO: Final = Path(__file__).resolve().parents[3]
INFRA: Final = REPO / "deploy" / "local" / "infra.sh"
INSTALL_HINT: Final = "bash deploy/local/infra.sh install mlserver"

WINE_FEATURES: Final = 13
WINE_CLASSES: Final = 3

_TRAIN: Final = """
import json, sys
import joblib
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

x, y = load_wine(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=0, stratify=y)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
joblib.dump(model, sys.argv[1])
print(json.dumps({
    "accuracy": model.score(x_test, y_test),
    "rows": x_test[:4].tolist(),
    "labels": model.predict(x_test[:4]).tolist(),
}))
"""


@cache
def mlserver_binary() -> Path:
    """The ``mlserver`` executable; fails the test, naming the install command, if absent."""
    given = os.environ.get("MULAMBDA_MLSERVER_BIN")
    if given:
        path = Path(given)
    else:
        found = subprocess.run(
            ["bash", str(INFRA), "mlserver-bin"], capture_output=True, text=True, check=False
        )
        if found.returncode != 0:
            pytest.fail(f"MLServer is not installed; run: {INSTALL_HINT}\n{found.stderr.strip()}")
        path = Path(found.stdout.strip())
    if not os.access(path, os.X_OK):
        pytest.fail(f"no executable mlserver at {path}; run: {INSTALL_HINT}")
    return path


def train_wine_model(folder: Path, name: str, version: int = 1) -> dict[str, Any]:
    """Train a scikit-learn wine classifier into ``folder`` in MLServer's model folder
    layout (``model.joblib`` + ``model-settings.json``). Returns its test ``accuracy``,
    some test ``rows`` and the ``labels`` it predicts for them."""
    folder.mkdir(parents=True, exist_ok=True)
    python = mlserver_binary().parent / "python"
    done = subprocess.run(
        [str(python), "-c", _TRAIN, str(folder / "model.joblib")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": str(version)},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts


class MLServer:
    """``mlserver start`` over ``models_dir`` (a folder of model folders) on free ports.

    ``start`` returns once ``/v2/health/ready`` and every ``ready_models`` answer 200;
    ``stop`` terminates the process (KILL after 10 s); both are idempotent.
    """

    def __init__(self, models_dir: Path, log_path: Path) -> None:
        self.models_dir = models_dir
        self.log_path = log_path
        self.http_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REST base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self, ready_models: tuple[str, ...] = (), timeout_s: float = 90.0) -> None:
        if self._process is not None:
            return
        self.http_port = free_port()
        settings = {
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": 0,
            "debug": False,  # else 500s carry the server's traceback as their body
            "server_name": f"mlserver-{uuid.uuid4().hex[:8]}",
        }
        (self.models_dir / "settings.json").write_text(json.dumps(settings))
        self._process = self._spawn()
        paths = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in ready_models)]
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not await _all_ok(session, self.url, paths):
                if self._process.poll() is not None:
                    self._process = None
                    pytest.fail(f"MLServer exited during start-up:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"MLServer not ready after {timeout_s:g}s:\n{self.log_tail()}")
                await asyncio.sleep(0.2)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [str(mlserver_binary()), "start", str(self.models_dir)],
                cwd=self.models_dir,  # MLServer writes its metrics dir there
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


async def _all_ok(session: aiohttp.ClientSession, base: str, paths: list[str]) -> bool:
    for path in paths:
        try:
            async with session.get(base + path) as response:
                if response.status != 200:
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
    return True


@contextlib.asynccontextmanager
async def wine_served_from_minio(
    infra: Infra, work: Path, name: str = "wine", version: int = 1
) -> AsyncIterator[tuple[MLServer, dict[str, Any]]]:
    """Train a wine model, upload it to a bucket of its own on MinIO, pull it back with
    :class:`ModelStore` into MLServer's models folder and serve it there; yields the
    started server and :func:`train_wine_model`'s facts. Bucket and server are removed
    afterwards."""
    facts = train_wine_model(work / "trained" / name, name, version)
    bucket = f"mulambda-test-oip-{uuid.uuid4().hex[:10]}"
    store = ModelStore(
        infra.minio_endpoint,
        infra.minio_access_key,
        infra.minio_secret_key,
        secure=False,
        bucket=bucket,
    )
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    server = MLServer(models, work / "mlserver.log")
    async with store:
        try:
            await store.upload(work / "trained" / name, name, version)
            await store.download(name, version, dest_dir=models / name)
            await server.start(ready_models=(name,))
            yield server, facts
        finally:
            server.stop()
            await store.delete(name, version)
            remove_bucket(infra, bucket)
