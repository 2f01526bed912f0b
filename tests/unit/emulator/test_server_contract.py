"""ExecutorServer against the TF Serving REST contract (tfserving_rest.md), over real HTTP.

Every URL form, request format and error of the reference is exercised against synthetic
models; a tiny SavedModel built at test time covers the TensorFlow path when tensorflow is
installed.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from mulambda.emulator import (
    STATS_PATH,
    ExecutorServer,
    SavedModelModel,
    ServedModel,
    SyntheticModel,
    saved_model_versions,
    synthetic_models,
)
from mulambda.emulator.profiles import PROTOTYPE_PROFILES, SyntheticProfile, profile_by_name
from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import decode_json
from mulambda.wire.events import ModelState

pytestmark = pytest.mark.unit

FAST_BAD = profile_by_name("FastBad")
FAST_GOOD = profile_by_name("FastGood")
MID_OK = profile_by_name("MidOK")
SLOW_BAD = profile_by_name("SlowBad")
SLOW_MID = profile_by_name("SlowMid")
MID_BAD = profile_by_name("MidBad")
SCALE = 0.001  # synthetic delays shrunk a thousandfold: FastBad answers in ~10 µs


@dataclass
class Answer:
    """One HTTP exchange as seen by a client."""

    status: int
    content_type: str
    body: bytes

    @property
    def json(self) -> Any:
        return decode_json(self.body)

    @property
    def error(self) -> str:
        document = self.json
        assert isinstance(document, dict)
        assert set(document) == {"error"}, document
        assert isinstance(document["error"], str)
        return document["error"]


async def call(
    session: aiohttp.ClientSession,
    server: ExecutorServer,
    method: str,
    path: str,
    body: bytes | str | None = None,
) -> Answer:
    data = body.encode() if isinstance(body, str) else body
    # encoded=True: send the path exactly as written (case, percent escapes, colons).
    url = URL(server.url + path, encoded=True)
    async with session.request(method, url, data=data) as response:
        return Answer(response.status, response.content_type, await response.read())


async def wait_for_state(model: SyntheticModel, state: ModelState, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while model.state is not state:
        assert time.monotonic() < deadline, f"model stuck in {model.state}"
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(scope="module")
async def server() -> AsyncIterator[ExecutorServer]:
    loading_v2 = SyntheticModel(SLOW_MID, 2, SCALE, load_delay_s=3600)
    broken = SyntheticModel(MID_BAD, 1, SCALE, load_error="disk on fire")
    models: dict[str, ServedModel | list[ServedModel]] = {
        # Two versions; the output's "model" tells which one answered.
        "fast": [SyntheticModel(FAST_BAD, 1, SCALE, seed=1), SyntheticModel(FAST_GOOD, 2, SCALE)],
        "predict-only": SyntheticModel(MID_OK, 1, SCALE, verbs=("predict",)),
        "loading": [SyntheticModel(SLOW_BAD, 1, SCALE), loading_v2],
        "broken": broken,
    }
    labels = {"fast": {"stable": 1, "canary": 2}}
    async with ExecutorServer("127.0.0.1", 0, models, labels=labels) as srv:
        await wait_for_state(loading_v2, ModelState.LOADING)
        await wait_for_state(broken, ModelState.END)
        for versions in srv.models.values():
            for model in versions:
                if model is not loading_v2 and model is not broken:
                    assert isinstance(model, SyntheticModel)
                    await wait_for_state(model, ModelState.AVAILABLE)
        yield srv


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def status_entry(version: int, state: str = "AVAILABLE", code: str = "OK", msg: str = "") -> Any:
    return {
        "version": str(version),
        "state": state,
        "status": {"error_code": code, "error_message": msg},
    }


# --- status --------------------------------------------------------------------------


async def test_status_lists_every_version_highest_first(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    answer = await call(session, server, "GET", "/v1/models/fast")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert answer.json == {"model_version_status": [status_entry(2), status_entry(1)]}


async def test_status_of_one_version_and_of_a_label(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    by_version = await call(session, server, "GET", "/v1/models/fast/versions/1")
    assert by_version.json == {"model_version_status": [status_entry(1)]}
    by_label = await call(session, server, "GET", "/v1/models/fast/labels/canary")
    assert by_label.json == {"model_version_status": [status_entry(2)]}


async def test_status_shows_loading_and_failed_versions(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    loading = await call(session, server, "GET", "/v1/models/loading")
    assert loading.json == {"model_version_status": [status_entry(2, "LOADING"), status_entry(1)]}
    broken = await call(session, server, "GET", "/v1/models/broken/versions/1")
    assert broken.status == 200
    assert broken.json == {
        "model_version_status": [status_entry(1, "END", "UNKNOWN", "disk on fire")]
    }


# --- metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/v1/models/fast/metadata", "2"),
        ("/v1/models/fast/versions/1/metadata", "1"),
        ("/v1/models/fast/labels/stable/metadata", "1"),
    ],
)
async def test_metadata_of_each_url_form(
    server: ExecutorServer, session: aiohttp.ClientSession, path: str, version: str
) -> None:
    answer = await call(session, server, "GET", path)
    assert answer.status == 200
    document = answer.json
    assert document["model_spec"] == {"name": "fast", "signature_name": "", "version": version}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["feature"]["dtype"] == "DT_INT64"
    assert signature["inputs"]["feature"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    assert set(signature["outputs"]) == {"confidence", "model"}


# --- URL grammar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/V1/MODELS/fast"),
        ("GET", "/v1/Models/fast/VERSIONS/1"),
        ("GET", "/v1/models/fast/Labels/stable/METADATA"),
        ("GET", "/v1/models/f%61st"),  # names are percent-decoded after matching
        ("POST", "/V1/models/fast/versions/1:PREDICT"),
        ("POST", "/v1/models/fast/LABELS/canary:Predict"),
    ],
)
async def test_paths_match_case_insensitively(
    server: ExecutorServer, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    body = '{"instances": [0]}' if method == "POST" else None
    answer = await call(session, server, method, path, body)
    assert answer.status == 200, answer.body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/fast"),  # status URL with POST
        ("GET", "/v1/models/fast:predict"),  # inference URL with GET
        ("POST", "/v1/models/fast:explain"),  # unknown verb
        ("GET", "/v1/models/fast/versions/abc"),  # versions are digits only
        ("GET", "/v1/models/fast/versions/-1"),
        ("GET", "/v1/models/fast/versions/1.5"),
        ("POST", "/v1/models/fast/versions/x:predict"),
        ("GET", "/v1/models/fast/versions/1/labels/stable"),  # both
        ("GET", "/v1/models/fast/other"),
        ("GET", "/v1/models/"),
        ("PUT", "/v1/models/fast"),
        ("DELETE", "/v1/models/fast"),
    ],
)
async def test_malformed_urls_are_400(
    server: ExecutorServer, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    answer = await call(session, server, method, path, "{}" if method != "GET" else None)
    assert answer.status == 400
    assert answer.content_type == "application/json"
    assert answer.error == f"Malformed request: {method} {path}"


async def test_paths_outside_v1_are_404(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    answer = await call(session, server, "GET", "/v2/models/fast")
    assert answer.status == 404
    assert "error" in answer.json


# --- predict -------------------------------------------------------------------------


async def test_predict_row_format_answers_predictions(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    body = '{"instances": [0, {"feature": 1}, {"feature": 2, "data": [1, 2, 3]}, 7, [5, 5]]}'
    answer = await call(session, server, "POST", "/v1/models/fast/versions/1:predict", body)
    assert answer.status == 200
    assert answer.json == {
        "predictions": [
            {"confidence": pytest.approx(FAST_BAD.confidence(0)), "model": "FastBad"},
            {"confidence": pytest.approx(FAST_BAD.confidence(1)), "model": "FastBad"},
            {"confidence": pytest.approx(FAST_BAD.confidence(2)), "model": "FastBad"},
            {"confidence": 0.0, "model": "FastBad"},  # feature out of range
            {"confidence": pytest.approx(FAST_BAD.confidence(0)), "model": "FastBad"},
        ]
    }


async def test_predict_columnar_format_answers_outputs(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    body = '{"inputs": {"feature": [2, 0], "data": [[1], [2, 3]]}}'
    answer = await call(session, server, "POST", "/v1/models/fast/versions/1:predict", body)
    assert answer.status == 200
    assert answer.json == {
        "outputs": {
            "confidence": [
                pytest.approx(FAST_BAD.confidence(2)),
                pytest.approx(FAST_BAD.confidence(0)),
            ],
            "model": ["FastBad", "FastBad"],
        }
    }
    scalar = await call(
        session, server, "POST", "/v1/models/fast/versions/1:predict", '{"inputs": 1}'
    )
    assert scalar.json["outputs"]["confidence"] == [pytest.approx(FAST_BAD.confidence(1))]


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/models/fast:predict", "FastGood"),  # highest version by default
        ("/v1/models/fast/versions/1:predict", "FastBad"),
        ("/v1/models/fast/versions/2:predict", "FastGood"),
        ("/v1/models/fast/labels/stable:predict", "FastBad"),
        ("/v1/models/fast/labels/canary:predict", "FastGood"),
        ("/v1/models/loading:predict", "SlowBad"),  # v2 still LOADING: v1 answers
    ],
)
async def test_predict_routes_to_the_addressed_version(
    server: ExecutorServer, session: aiohttp.ClientSession, path: str, model: str
) -> None:
    answer = await call(session, server, "POST", path, '{"instances": [0]}')
    assert answer.status == 200
    assert answer.json["predictions"][0]["model"] == model


async def test_signature_name_is_honoured(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    for signature in ('"serving_default"', '""'):
        body = f'{{"signature_name": {signature}, "instances": [1]}}'
        answer = await call(session, server, "POST", "/v1/models/fast:predict", body)
        assert answer.status == 200


async def test_nan_and_infinity_tokens_are_accepted(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    body = '{"instances": [{"feature": 0, "data": [NaN, Infinity, -Infinity, 1.5]}]}'
    answer = await call(session, server, "POST", "/v1/models/fast/versions/1:predict", body)
    assert answer.status == 200
    assert answer.json["predictions"][0]["model"] == "FastBad"


# --- classify and regress ------------------------------------------------------------


async def test_classify_answers_results_of_label_score_pairs(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    body = '{"examples": [{"feature": 0}, {"feature": [2]}, {"data": [1, 2]}]}'
    answer = await call(session, server, "POST", "/v1/models/fast/versions/2:classify", body)
    assert answer.status == 200
    assert answer.json == {
        "results": [
            [["FastGood", pytest.approx(FAST_GOOD.confidence(0))]],
            [["FastGood", pytest.approx(FAST_GOOD.confidence(2))]],
            [["FastGood", pytest.approx(FAST_GOOD.confidence(0))]],
        ]
    }


async def test_regress_answers_one_value_per_example_with_context(
    server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    body = '{"context": {"feature": 1}, "examples": [{}, {"feature": 2}]}'
    answer = await call(session, server, "POST", "/v1/models/fast/labels/stable:regress", body)
    assert answer.status == 200
    assert answer.json == {
        "results": [pytest.approx(FAST_BAD.confidence(1)), pytest.approx(FAST_BAD.confidence(2))]
    }


@pytest.mark.parametrize("verb", ["classify", "regress"])
async def test_unimplemented_verb_is_501(
    server: ExecutorServer, session: aiohttp.ClientSession, verb: str
) -> None:
    answer = await call(
        session, server, "POST", f"/v1/models/predict-only:{verb}", '{"examples": [{}]}'
    )
    assert answer.status == 501
    assert verb in answer.error


# --- error answers: one request shape, one table ---------------------------------


_STATUS_ERRORS = [
    ("/v1/models/nope", 404, "Could not find any versions of model nope"),
    ("/v1/models/fast/versions/9", 404, "Could not find version 9 of model fast"),
    ("/v1/models/fast/labels/beta", 400, "Unrecognized servable version label: beta"),
    ("/v1/models/nope/labels/stable", 400, "Unrecognized servable version label: stable"),
    ("/v1/models", 400, "Missing model name in request."),
    (
        "/v1/models/fast/versions/99999999999999999999",
        400,
        "Failed to convert version: 99999999999999999999 to numeric.",
    ),
]
"""(path, status, message) of a status read."""


_METADATA_ERRORS = [
    ("/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
    (
        "/v1/models/loading/versions/2/metadata",
        404,
        "Servable not found for request: Specific(loading, 2)",
    ),
    ("/v1/models/broken/metadata", 404, "Servable not found for request: Latest(broken)"),
    ("/v1/models/fast/labels/x/metadata", 400, "Unrecognized servable version label: x"),
]
"""(path, status, message) of a metadata read."""


_PREDICT_WITHOUT_PAYLOAD = [
    ("{}", "Missing 'inputs' or 'instances' key"),
    ('{"signature_name": "serving_default"}', "Missing 'inputs' or 'instances' key"),
]
"""(body, message) of a :predict of fast."""


_PREDICT_BAD_REQUESTS = [
    (
        '{"instances": [1], "inputs": [1]}',
        "expecting only one of 'inputs' or 'instances' keys",
    ),
    ('{"instances": 1}', "'instances' to be an list/array"),
    ('{"instances": []}', "No values in 'instances' array"),
    ('{"signature_name": 5, "instances": [1]}', "'signature_name' key must be a string value."),
    (
        '{"signature_name": "other", "instances": [1]}',
        'Serving signature name: "other" not found in signature def',
    ),
    ('{"instances": [', "JSON Parse error"),
    ('{"instances": [1]} trailing', "JSON Parse error"),
    ("", "JSON Parse error: The document is empty"),
    ("[1, 2]", "Is not object"),
    ('{"instances": ["seven"]}', "is not of expected type: int64"),
    ('{"instances": [{"feature": 1.5}]}', "is not of expected type: int64"),
    ('{"instances": [{"feature": true}]}', "is not of expected type: int64"),
    ('{"instances": [{"feature": 1, "data": 3}]}', "'data'"),
    ('{"inputs": {"other": [1]}}', "Missing named input: feature in 'inputs' object."),
]
"""(body, part of the message) of a :predict of fast."""


_MISSING_SERVABLES = [
    ("/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
    (
        "/v1/models/fast/versions/9:predict",
        404,
        "Servable not found for request: Specific(fast, 9)",
    ),
    (
        "/v1/models/loading/versions/2:predict",
        404,
        "Servable not found for request: Specific(loading, 2)",
    ),
    ("/v1/models/broken:predict", 404, "Servable not found for request: Latest(broken)"),
    ("/v1/models/fast/labels/beta:predict", 400, "Unrecognized servable version label: beta"),
]
"""(path, status, message) of a :predict of rows."""


_CLASSIFY_BAD_REQUESTS = [
    ("{}", "When method is classify, key 'examples' is expected and was not found"),
    ('{"examples": {}}', "Expecting 'examples' value to be an list/array"),
    ('{"examples": []}', "'examples' value is an empty array"),
    ('{"examples": [1]}', "Example must be JSON object but got JSON Number"),
    ('{"context": [], "examples": [{}]}', "Example must be JSON object but got JSON Array"),
    ('{"examples": [{"feature": "x"}]}', "is not of expected type: int64"),
]
"""(body, part of the message) of a :classify of fast."""


ERROR_CASES = [
    *(
        pytest.param("GET", path, None, status, message, "exact", id=f"status {path}")
        for path, status, message in _STATUS_ERRORS
    ),
    *(
        pytest.param("GET", path, None, status, message, "exact", id=f"metadata {path}")
        for path, status, message in _METADATA_ERRORS
    ),
    pytest.param(
        "GET",
        "/v1/models/FAST",
        None,
        404,
        "Could not find any versions of model FAST",
        "exact",
        id="model names stay case-sensitive",
    ),
    *(
        pytest.param(
            "POST", "/v1/models/fast:predict", body, 400, message, "exact", id=f"no payload {body}"
        )
        for body, message in _PREDICT_WITHOUT_PAYLOAD
    ),
    *(
        pytest.param(
            "POST", "/v1/models/fast:predict", body, 400, part, "part", id=f"bad predict {body}"
        )
        for body, part in _PREDICT_BAD_REQUESTS
    ),
    *(
        pytest.param(
            "POST", path, '{"instances": [0]}', status, message, "exact", id=f"missing {path}"
        )
        for path, status, message in _MISSING_SERVABLES
    ),
    # TF Serving parses the body before it looks the servable up.
    pytest.param(
        "POST",
        "/v1/models/nope:predict",
        "{nope",
        400,
        "JSON Parse error",
        "prefix",
        id="bad JSON is reported before a missing model",
    ),
    *(
        pytest.param(
            "POST", "/v1/models/fast:classify", body, 400, part, "part", id=f"bad classify {body}"
        )
        for body, part in _CLASSIFY_BAD_REQUESTS
    ),
]
"""Requests the server refuses: (method, path, body, status, error text, how it matches:
the "exact" text, a "part" of it, or its "prefix")."""


@pytest.mark.parametrize(("method", "path", "body", "status", "message", "match"), ERROR_CASES)
async def test_error_answers(
    server: ExecutorServer,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: str | None,
    status: int,
    message: str,
    match: str,
) -> None:
    answer = await call(session, server, method, path, body)
    assert answer.status == status
    assert answer.content_type == "application/json"
    if match == "exact":
        assert answer.error == message
    elif match == "part":
        assert message in answer.error
    else:
        assert answer.error.startswith(message)


# --- counters, delays, lifecycle -----------------------------------------------------


class GatedSleep:
    """A ``sleep`` that records the delays asked for and blocks until released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self.release.wait()


async def test_in_flight_and_errors_are_counted_and_drive_the_delay(
    session: aiohttp.ClientSession,
) -> None:
    profile = SyntheticProfile(
        "Steady", D=10, alpha=0.5, beta=2.0, J=0, confidences=(1.0,), gamma=0
    )
    sleep = GatedSleep()
    model = SyntheticModel(profile, sleep=sleep)
    async with ExecutorServer("127.0.0.1", 0, {"steady": model}) as srv:
        await srv.wait_loaded()
        body = '{"instances": [{"feature": 0, "data": [1, 2, 3]}]}'
        calls = [
            asyncio.create_task(call(session, srv, "POST", "/v1/models/steady:predict", body))
            for _ in range(3)
        ]
        deadline = time.monotonic() + 5
        while srv.in_flight < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stats = (await call(session, srv, "GET", STATS_PATH)).json
        assert stats["in_flight"] == 3
        assert stats["models"]["steady"] == [{"version": 1, "state": "AVAILABLE", "in_flight": 3}]
        # D/1000 + 3 elements * alpha + (requests already in flight) * beta
        assert sorted(sleep.delays) == [
            pytest.approx(0.010 + 1.5 + 0.0),
            pytest.approx(0.010 + 1.5 + 2.0),
            pytest.approx(0.010 + 1.5 + 4.0),
        ]
        sleep.release.set()
        answers = await asyncio.gather(*calls)
        assert [a.status for a in answers] == [200, 200, 200]
        assert srv.in_flight == 0
        assert srv.errors == 0
        await call(session, srv, "GET", "/v1/models/nope")
        await call(session, srv, "POST", "/v1/models/steady:predict", "{}")
        stats = (await call(session, srv, "GET", STATS_PATH)).json
        assert stats["in_flight"] == 0
        assert stats["errors"] == 2
        assert stats["errors_by_status"] == {"400": 1, "404": 1}
        assert stats["requests"] == 5  # the stats endpoint itself is not counted


async def test_synthetic_delay_is_really_slept(session: aiohttp.ClientSession) -> None:
    profile = SyntheticProfile("Slow", D=150, alpha=0, beta=0, J=0, confidences=(0.5,), gamma=0)
    async with ExecutorServer("127.0.0.1", 0, {"slow": SyntheticModel(profile)}) as srv:
        await srv.wait_loaded()
        started = time.perf_counter()
        answer = await call(session, srv, "POST", "/v1/models/slow:predict", '{"instances": [0]}')
        assert answer.status == 200
        assert time.perf_counter() - started >= 0.15


async def test_network_delay_applies_to_every_request(session: aiohttp.ClientSession) -> None:
    model = SyntheticModel(FAST_BAD, time_scale=0.0)
    async with ExecutorServer("127.0.0.1", 0, {"m": model}, network_delay_ms=120) as srv:
        await srv.wait_loaded()
        for method, path, body in [
            ("GET", "/v1/models/m", None),
            ("POST", "/v1/models/m:predict", '{"instances": [0]}'),
        ]:
            started = time.perf_counter()
            answer = await call(session, srv, method, path, body)
            assert answer.status == 200
            assert time.perf_counter() - started >= 0.12


async def test_oversized_body_is_a_400(session: aiohttp.ClientSession) -> None:
    model = SyntheticModel(FAST_BAD, time_scale=0.0)
    async with ExecutorServer("127.0.0.1", 0, {"m": model}, max_body_bytes=1000) as srv:
        await srv.wait_loaded()
        body = '{"instances": [' + ",".join(["0"] * 1000) + "]}"
        answer = await call(session, srv, "POST", "/v1/models/m:predict", body)
        assert answer.status == 400
        assert "larger than 1000 bytes" in answer.error


async def test_lifecycle_ephemeral_port_and_idempotent_stop() -> None:
    srv = ExecutorServer("127.0.0.1", 0, synthetic_models(PROTOTYPE_PROFILES, time_scale=0))
    with pytest.raises(ConfigurationError):
        _ = srv.port
    await srv.start()
    await srv.start()  # no-op
    assert srv.port > 0
    assert await srv.wait_loaded(timeout_s=5)
    assert sorted(srv.models) == sorted(p.name for p in PROTOTYPE_PROFILES)
    url = srv.url
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/models/SlowGood") as r:
        assert r.status == 200
    await srv.stop()
    await srv.stop()
    assert all(m.state is ModelState.END for vs in srv.models.values() for m in vs)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(url + "/v1/models/SlowGood")


async def test_stop_while_loading_cancels_the_load() -> None:
    model = SyntheticModel(FAST_BAD, load_delay_s=3600)
    async with ExecutorServer("127.0.0.1", 0, {"m": model}) as srv:
        assert not await srv.wait_loaded(timeout_s=0.05)
        assert model.state is ModelState.LOADING
    assert model.status().state is ModelState.END


@pytest.mark.parametrize(
    ("models", "labels"),
    [
        ({"m": [SyntheticModel(FAST_BAD, 1), SyntheticModel(FAST_GOOD, 1)]}, None),
        ({"m": []}, None),
        ({"a:b": SyntheticModel(FAST_BAD)}, None),
        ({"a/b": SyntheticModel(FAST_BAD)}, None),
        ({"m": SyntheticModel(FAST_BAD)}, {"m": {"stable": 2}}),
        ({"m": SyntheticModel(FAST_BAD)}, {"other": {"stable": 1}}),
    ],
)
def test_invalid_server_configuration(models: Any, labels: Any) -> None:
    with pytest.raises(ConfigurationError):
        ExecutorServer("127.0.0.1", 0, models, labels=labels)


# --- a real SavedModel ---------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")

    class Tiny(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def single(self, x: Any) -> Any:
            return {"y": tf.reduce_sum(x, axis=1) * self.w}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="x"),
                tf.TensorSpec([None], tf.string, name="tag_bytes"),
            ]
        )
        def multi(self, x: Any, tag_bytes: Any) -> Any:
            return {"total": tf.reduce_sum(x, axis=1), "echo_bytes": tag_bytes}

    module = Tiny()
    path = tmp_path_factory.mktemp("tiny") / "1"
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.single, "multi": module.multi}
    )
    return path


@pytest_asyncio.fixture(scope="module")
async def tf_server(saved_model_dir: Path) -> AsyncIterator[ExecutorServer]:
    models = {
        "tiny": SavedModelModel(saved_model_dir, 1),
        "missing": SavedModelModel(saved_model_dir.parent / "does-not-exist", 1),
    }
    async with ExecutorServer("127.0.0.1", 0, models) as srv:
        assert await srv.wait_loaded(timeout_s=120)
        yield srv


@pytest.mark.tensorflow
async def test_saved_model_served_from_a_base_path(
    saved_model_dir: Path, session: aiohttp.ClientSession
) -> None:
    models = {"tiny": saved_model_versions(saved_model_dir.parent)}
    async with ExecutorServer("127.0.0.1", 0, models) as srv:
        assert await srv.wait_loaded(timeout_s=120)
        answer = await call(
            session, srv, "POST", "/v1/models/tiny/versions/1:predict", '{"instances": [[1, 1, 1]]}'
        )
        assert answer.json == {"predictions": [6.0]}


@pytest.mark.tensorflow
async def test_saved_model_status_and_failed_load(
    tf_server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    ok = await call(session, tf_server, "GET", "/v1/models/tiny")
    assert ok.json == {"model_version_status": [status_entry(1)]}
    missing = (await call(session, tf_server, "GET", "/v1/models/missing")).json
    entry = missing["model_version_status"][0]
    assert entry["state"] == "END"
    assert entry["status"]["error_code"] != "OK"
    assert "does-not-exist" in entry["status"]["error_message"]
    answer = await call(
        session, tf_server, "POST", "/v1/models/missing:predict", '{"instances": [[1, 2, 3]]}'
    )
    assert answer.status == 404


@pytest.mark.tensorflow
async def test_saved_model_metadata_describes_the_signatures(
    tf_server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    document = (await call(session, tf_server, "GET", "/v1/models/tiny/versions/1/metadata")).json
    assert document["model_spec"]["version"] == "1"
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "multi"} <= set(signatures)
    x = signatures["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "3", "name": ""}]
    assert signatures["multi"]["inputs"]["tag_bytes"]["dtype"] == "DT_STRING"
    assert set(signatures["multi"]["outputs"]) == {"total", "echo_bytes"}


@pytest.mark.tensorflow
async def test_saved_model_predict_row_and_columnar(
    tf_server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    row = await call(
        session,
        tf_server,
        "POST",
        "/v1/models/tiny:predict",
        '{"instances": [[1, 2, 3], [0.05, 0.05, 0]]}',
    )
    assert row.status == 200, row.body
    # One output comes unnamed; float32 is written in its shortest form (0.2, not 0.2000000029).
    assert row.json == {"predictions": [12.0, 0.2]}
    columnar = await call(
        session, tf_server, "POST", "/v1/models/tiny:predict", '{"inputs": [[1, 1, 1]]}'
    )
    assert columnar.json == {"outputs": [6.0]}
    named = await call(
        session, tf_server, "POST", "/v1/models/tiny:predict", '{"inputs": {"x": [[1, 1, 1]]}}'
    )
    assert named.json == {"outputs": [6.0]}


@pytest.mark.tensorflow
async def test_saved_model_several_outputs_and_b64(
    tf_server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    hi = base64.b64encode(b"hi\xff").decode()
    body = (
        '{"signature_name": "multi", "instances": ['
        f'{{"x": [1, 2, 3], "tag_bytes": {{"b64": "{hi}"}}}}, '
        '{"x": [0, 0, 1], "tag_bytes": "plain"}]}'
    )
    row = await call(session, tf_server, "POST", "/v1/models/tiny:predict", body)
    assert row.status == 200, row.body
    assert row.json == {
        "predictions": [
            {"total": 6.0, "echo_bytes": {"b64": hi}},
            {"total": 1.0, "echo_bytes": {"b64": base64.b64encode(b"plain").decode()}},
        ]
    }
    body = '{"signature_name": "multi", "inputs": {"x": [[1, 0, 0]], "tag_bytes": ["a"]}}'
    columnar = await call(session, tf_server, "POST", "/v1/models/tiny:predict", body)
    assert columnar.json == {"outputs": {"total": [1.0], "echo_bytes": [{"b64": "YQ=="}]}}


@pytest.mark.tensorflow
async def test_saved_model_non_finite_values_travel_as_tokens(
    tf_server: ExecutorServer, session: aiohttp.ClientSession
) -> None:
    answer = await call(
        session,
        tf_server,
        "POST",
        "/v1/models/tiny:predict",
        '{"instances": [[NaN, 0, 0], [Infinity, 0, 0]]}',
    )
    assert answer.status == 200
    assert b"NaN" in answer.body
    assert b"Infinity" in answer.body
    nan, inf = answer.json["predictions"]
    assert math.isnan(nan)
    assert inf == math.inf


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ('{"instances": [["a", "b", "c"]]}', 400, "is not of expected type"),
        ('{"instances": [[1, 2]]}', 400, "has shape [1, 2]"),
        ('{"instances": [[1, 2, 3], [1, 2]]}', 400, "input 'x'"),
        (
            '{"signature_name": "multi", "instances": [[1, 2, 3]]}',
            400,
            "instances is a plain list, but expecting list of objects",
        ),
        (
            '{"signature_name": "multi", "instances": [{"x": [1, 2, 3]}]}',
            400,
            "must only have keys: tag_bytes,x",
        ),
        (
            '{"signature_name": "multi", "inputs": {"x": [[1, 2, 3]]}}',
            400,
            "Missing named input: tag_bytes in 'inputs' object.",
        ),
        (
            '{"signature_name": "multi", '
            '"instances": [{"x": [1, 2, 3], "tag_bytes": {"b64": "!"}}]}',
            400,
            "Unable to base64 decode",
        ),
        ('{"signature_name": "nope", "instances": [[1, 2, 3]]}', 400, '"nope" not found'),
    ],
)
async def test_saved_model_bad_requests(
    tf_server: ExecutorServer,
    session: aiohttp.ClientSession,
    body: str,
    status: int,
    fragment: str,
) -> None:
    answer = await call(session, tf_server, "POST", "/v1/models/tiny:predict", body)
    assert answer.status == status
    assert fragment in answer.error


@pytest.mark.tensorflow
@pytest.mark.parametrize("verb", ["classify", "regress"])
async def test_saved_model_classify_and_regress_are_unimplemented(
    tf_server: ExecutorServer, session: aiohttp.ClientSession, verb: str
) -> None:
    answer = await call(
        session, tf_server, "POST", f"/v1/models/tiny:{verb}", '{"examples": [{"x": 1.0}]}'
    )
    assert answer.status == 501
