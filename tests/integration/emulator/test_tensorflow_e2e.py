"""A real Keras model, end to end: trained here, stored in MinIO, pulled and served over REST.

The model is a small classifier of scikit-learn's bundled wine data set, trained at test
time (seeded), exported as a SavedModel in TF Serving's ``base/1/`` layout and uploaded with
:class:`~mulambda.models.store.ModelStore` into a bucket of its own.
``mulambda executor serve --model wine`` then runs as a subprocess, pulls the model from
MinIO and answers the TF Serving REST API, which must give the same numbers as Keras in
this process.

The tests share one executor subprocess and run in file order; the last one stops it with
SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from mulambda.errors import ExecutorError
from mulambda.executors.tfserving import TFServingClient
from mulambda.harness.infra import free_port
from mulambda.models.layout import MANIFEST_NAME
from mulambda.models.store import ModelStore
from mulambda.protocols.tfserving import BadRequest
from mulambda.wire.events import ModelState
from tests.conftest import Infra, remove_bucket

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]

MODEL = "wine"
FEATURES = 13
CLASSES = 3
MIN_ACCURACY = 0.85
LOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WineModel:
    """The trained classifier, exported, and what Keras itself predicts on held-out data."""

    base: Path
    """TF Serving base path: the SavedModel is ``base/1/``."""
    x_test: np.ndarray[Any, np.dtype[np.float32]]
    y_test: np.ndarray[Any, np.dtype[np.int64]]
    probabilities: np.ndarray[Any, np.dtype[np.float32]]
    """Keras's in-process predictions on ``x_test``."""
    accuracy: float


@dataclass
class Executor:
    """The ``mulambda executor serve`` subprocess and where it answers."""

    process: asyncio.subprocess.Process
    url: str
    model_dir: Path
    log: Path


@pytest.fixture(scope="module")
def wine_model(tmp_path_factory: pytest.TempPathFactory) -> WineModel:
    """Train and export the classifier (skips the module without TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
    import keras
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train).astype(np.float32)
    x_test = scaler.transform(x_test).astype(np.float32)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=30, batch_size=16, verbose=0)
    probabilities = np.asarray(model.predict(x_test, verbose=0))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    assert accuracy >= MIN_ACCURACY, f"the model itself only reaches {accuracy:.3f}"

    base = tmp_path_factory.mktemp("wine-export")
    model.export(str(base / "1"), verbose=False)
    return WineModel(base, x_test, y_test.astype(np.int64), probabilities, accuracy)


@pytest.fixture(scope="module")
def bucket(infra: Infra) -> Iterator[str]:
    """A bucket for this module alone, emptied and removed afterwards."""
    name = f"mulambda-test-wine-{uuid.uuid4().hex[:12]}"
    yield name
    remove_bucket(infra, name)


async def _wait_available(client: TFServingClient, executor: Executor) -> None:
    """Until the served model reports AVAILABLE; fails fast if the process died or gave up."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        if executor.process.returncode is not None:
            pytest.fail(
                f"executor exited with {executor.process.returncode}:\n{executor.log.read_text()}"
            )
        try:
            statuses = await client.status(MODEL, timeout_s=2.0)
        except ExecutorError as exc:  # not bound yet (pulling), or the model is unknown
            last = exc
        else:
            last = statuses
            if [s.state for s in statuses] == [ModelState.AVAILABLE]:
                return
            if any(s.state is ModelState.END for s in statuses):
                pytest.fail(f"model failed to load: {statuses}\n{executor.log.read_text()}")
        await asyncio.sleep(0.2)
    pytest.fail(
        f"{MODEL} not AVAILABLE within {LOAD_TIMEOUT_S:g}s (last: {last})\n"
        f"{executor.log.read_text()}"
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def executor(
    wine_model: WineModel, bucket: str, infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Executor]:
    """The model uploaded to MinIO, and an executor subprocess that pulled it and serves it."""
    async with ModelStore(
        infra.minio_endpoint, infra.minio_access_key, infra.minio_secret_key, bucket=bucket
    ) as store:
        manifest = await store.upload(wine_model.base / "1", MODEL)
    assert manifest.version == 1

    work = tmp_path_factory.mktemp("wine-executor")
    port = free_port()
    env = {
        **os.environ,
        **infra.env(),
        "MULAMBDA_MINIO_BUCKET": bucket,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    args = [
        "-m", "mulambda.cli", "executor", "serve",
        "--model", MODEL, "--port", str(port), "--model-dir", str(work / "models"),
    ]  # fmt: skip
    log_path = work / "executor.log"
    with log_path.open("w") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, stdout=log, stderr=log
        )
    running = Executor(process, f"http://127.0.0.1:{port}", work / "models", log_path)
    try:
        async with TFServingClient(running.url) as client:
            await _wait_available(client, running)
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def client(executor: Executor) -> AsyncIterator[TFServingClient]:
    async with TFServingClient(executor.url, timeout_s=30.0) as started:
        yield started


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_model_was_pulled_from_minio(
    wine_model: WineModel, executor: Executor, client: TFServingClient
) -> None:
    # The executor kept the downloaded version under --model-dir: the exported files, byte
    # for byte, without the store's manifest.
    pulled = _tree(executor.model_dir / MODEL / "1")
    assert pulled == _tree(wine_model.base / "1")
    assert {"saved_model.pb", "variables/variables.index"} <= set(pulled)
    assert MANIFEST_NAME not in pulled
    statuses = await client.status(MODEL)
    assert [(s.version, s.state, s.error_code) for s in statuses] == [
        (1, ModelState.AVAILABLE, "OK")
    ]


async def test_row_predictions_match_keras(wine_model: WineModel, client: TFServingClient) -> None:
    answer = await client.predict(MODEL, instances=wine_model.x_test.tolist())
    served = np.asarray(answer["predictions"], dtype=np.float32)
    assert served.shape == (len(wine_model.y_test), CLASSES)
    np.testing.assert_allclose(served, wine_model.probabilities, rtol=1e-5, atol=1e-6)
    classes = served.argmax(axis=1)
    assert (classes == wine_model.probabilities.argmax(axis=1)).all()
    accuracy = float(np.mean(classes == wine_model.y_test))
    assert accuracy == wine_model.accuracy
    assert accuracy >= MIN_ACCURACY


async def test_columnar_predictions_match_keras(
    wine_model: WineModel, client: TFServingClient
) -> None:
    # One named input: columnar "inputs" may be the bare tensor or an object naming it.
    bare = await client.predict(MODEL, inputs=wine_model.x_test.tolist())
    named = await client.predict(MODEL, inputs={"features": wine_model.x_test.tolist()})
    for answer in (bare, named):
        served = np.asarray(answer["outputs"], dtype=np.float32)
        np.testing.assert_allclose(served, wine_model.probabilities, rtol=1e-5, atol=1e-6)
        assert float(np.mean(served.argmax(axis=1) == wine_model.y_test)) == wine_model.accuracy


async def test_metadata_shows_the_signature(client: TFServingClient) -> None:
    document = await client.metadata(MODEL)
    assert document["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    [(input_name, tensor_in)] = signature["inputs"].items()
    [tensor_out] = signature["outputs"].values()
    assert input_name == "features"
    assert tensor_in["dtype"] == tensor_out["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in tensor_in["tensor_shape"]["dim"]] == ["-1", str(FEATURES)]
    assert [d["size"] for d in tensor_out["tensor_shape"]["dim"]] == ["-1", str(CLASSES)]


_STRINGS = b'{"instances": [["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"]]}'


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b'{"instances": [[1.0, 2.0', "JSON Parse error"),
        (b"[1.0, 2.0]", "Is not object"),
        (b'{"instances": [[1.0, 2.0]]}', "expects (None, 13)"),
        (_STRINGS, "not of expected type: float32"),
        (b'{"inputs": {"x": [[1.0]]}}', "Missing named input: features"),
        (b'{"signature_name": "nope", "instances": [[0.0]]}', '"nope" not found'),
    ],
    ids=[
        "truncated-json",
        "not-an-object",
        "wrong-feature-count",
        "strings",
        "unknown-input-name",
        "unknown-signature",
    ],
)
async def test_malformed_body_is_a_400_with_an_error(
    executor: Executor, client: TFServingClient, body: bytes, mentions: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{executor.url}/v1/models/{MODEL}:predict",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        status = response.status
        document = await response.json()
    assert status == 400
    assert set(document) == {"error"}
    assert mentions in document["error"]
    # The executor keeps serving after bad input.
    statuses = await client.status(MODEL)
    assert [s.state for s in statuses] == [ModelState.AVAILABLE]


async def test_typed_client_maps_a_400_onto_bad_request(client: TFServingClient) -> None:
    with pytest.raises(BadRequest) as caught:
        await client.predict(MODEL, instances=[[1.0, 2.0]])
    assert caught.value.status == 400
    assert not caught.value.retriable
    assert caught.value.server_message is not None
    assert "expects (None, 13)" in caught.value.server_message


async def test_sigterm_stops_the_executor_with_exit_0(executor: Executor) -> None:
    executor.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(executor.process.wait(), 30)
    assert code == 0, executor.log.read_text()
