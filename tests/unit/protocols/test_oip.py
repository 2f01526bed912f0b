"""Bodies converted between TF Serving REST and OIP v2 (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from mulambda.protocols.oip import (
    UnsupportedByProtocol,
    is_oip_body,
    oip_request_from_tf,
    oip_response_from_tf,
    tensor_from_nested,
    tensor_to_nested,
    tf_output_from_oip,
    tf_request_from_oip,
)
from mulambda.protocols.tfserving import BadRequest, GarbageResponse, NonFiniteOutput

pytestmark = pytest.mark.unit


def test_dialect_is_told_by_typed_tensors() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}
    assert is_oip_body({"inputs": [tensor]})
    assert not is_oip_body({"inputs": [[1.0, 2.0]]})  # TF columnar, one unnamed input
    assert not is_oip_body({"inputs": {"x": [1.0]}})  # TF columnar, named inputs
    assert not is_oip_body({"instances": [tensor]})
    assert not is_oip_body({"inputs": []})


@pytest.mark.parametrize(
    ("value", "shape", "datatype", "data"),
    [
        ([[1, 2], [3, 4]], [2, 2], "INT64", [1, 2, 3, 4]),
        ([[1, 2.5]], [1, 2], "FP64", [1.0, 2.5]),
        ([True, False], [2], "BOOL", [True, False]),
        (["a", "b"], [2], "BYTES", ["a", "b"]),
        (7, [], "INT64", [7]),
        ([], [0], "FP64", []),
    ],
)
def test_tensor_from_nested_infers_shape_and_datatype(
    value: Any, shape: list[int], datatype: str, data: list[Any]
) -> None:
    assert tensor_from_nested("t", value) == {
        "name": "t",
        "shape": shape,
        "datatype": datatype,
        "data": data,
    }


@pytest.mark.parametrize("value", [[[1, 2], [3]], [[1], 2], [1, "a"], [{"a": 1}]])
def test_ragged_or_mixed_tensors_are_bad_requests(value: Any) -> None:
    with pytest.raises(BadRequest):
        tensor_from_nested("t", value)


def test_tensor_to_nested_reads_flat_or_nested_data() -> None:
    flat = {"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    assert tensor_to_nested(flat) == [[1.0, 2.0], [3.0, 4.0]]
    nested = {"name": "y", "shape": [2, 1], "datatype": "INT64", "data": [[0], [2]]}
    assert tensor_to_nested(nested) == [[0], [2]]
    scalar = {"name": "y", "shape": [], "datatype": "INT32", "data": [5]}
    assert tensor_to_nested(scalar) == 5
    with pytest.raises(GarbageResponse, match="3 values for shape"):
        tensor_to_nested({"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]})
    with pytest.raises(GarbageResponse):
        tensor_to_nested({"name": "y", "shape": "2", "data": []})


def test_tf_rows_become_one_tensor_and_predictions_come_back_as_rows() -> None:
    body = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    assert oip_request_from_tf("predict", body) == {
        "inputs": [
            {"name": "input", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}
        ]
    }
    label = {"name": "predict", "shape": [2, 1], "datatype": "INT64", "data": [0, 2]}
    response = {"outputs": [label]}
    assert tf_output_from_oip(body, response) == {"predictions": [[0], [2]]}


def test_named_instances_stack_per_name_and_several_outputs_come_back_per_row() -> None:
    body = {"instances": [{"a": 1, "b": [1.0, 2.0]}, {"a": 2, "b": [3.0, 4.0]}]}
    request = oip_request_from_tf("predict", body)
    assert [(t["name"], t["shape"], t["datatype"]) for t in request["inputs"]] == [
        ("a", [2], "INT64"),
        ("b", [2, 2], "FP64"),
    ]
    response = {
        "outputs": [
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]},
            {"name": "p", "shape": [2], "datatype": "FP64", "data": [0.9, 0.8]},
        ]
    }
    assert tf_output_from_oip(body, response) == {
        "predictions": [{"label": 1, "p": 0.9}, {"label": 0, "p": 0.8}]
    }
    with pytest.raises(BadRequest, match="same inputs"):
        oip_request_from_tf("predict", {"instances": [{"a": 1}, {"b": 2}]})


def test_several_outputs_for_rows_must_share_a_batch_dimension() -> None:
    rows = {"instances": [[1.0], [2.0]]}
    scalar = {"name": "s", "shape": [], "datatype": "FP64", "data": [0.5]}
    batch = {"name": "b", "shape": [2], "datatype": "FP64", "data": [0.1, 0.2]}
    short = {"name": "c", "shape": [1], "datatype": "FP64", "data": [0.3]}
    for outputs in ([scalar, batch], [batch, short]):
        with pytest.raises(GarbageResponse, match="batch dimension"):
            tf_output_from_oip(rows, {"outputs": outputs})


def test_tf_columns_become_tensors_and_outputs_come_back_as_columns() -> None:
    named = {"inputs": {"a": [1, 2], "b": [[1.0], [2.0]]}}
    assert [t["name"] for t in oip_request_from_tf("predict", named)["inputs"]] == ["a", "b"]
    single = {"inputs": [[1.0, 2.0]]}
    assert oip_request_from_tf("predict", single)["inputs"][0]["shape"] == [1, 2]
    one = {"outputs": [{"name": "y", "shape": [1], "datatype": "FP64", "data": [0.5]}]}
    assert tf_output_from_oip(single, one) == {"outputs": [0.5]}
    two = {
        "outputs": [
            {"name": "y", "shape": [1], "datatype": "FP64", "data": [0.5]},
            {"name": "z", "shape": [1], "datatype": "BYTES", "data": ["k"]},
        ]
    }
    assert tf_output_from_oip(named, two) == {"outputs": {"y": [0.5], "z": ["k"]}}
    with pytest.raises(GarbageResponse, match="lacks 'outputs'"):
        tf_output_from_oip(single, {"model_name": "m"})


def test_what_oip_cannot_express_is_retriable_elsewhere() -> None:
    for verb, body in (
        ("classify", {"examples": [{"x": 1}]}),
        ("regress", {"examples": [{"x": 1}]}),
        ("predict", {"examples": [{"x": 1}]}),
    ):
        with pytest.raises(UnsupportedByProtocol) as refused:
            oip_request_from_tf(verb, body)
        assert refused.value.retriable
        assert refused.value.status is None


def test_an_oip_body_becomes_tf_columns_and_the_answer_becomes_tensors() -> None:
    one = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert tf_request_from_oip("predict", one) == {"inputs": [[1.0, 2.0], [3.0, 4.0]]}
    two = {
        "inputs": [
            {"name": "x", "shape": [1], "datatype": "INT64", "data": [1]},
            {"name": "y", "shape": [1], "datatype": "BYTES", "data": ["s"]},
        ]
    }
    assert tf_request_from_oip("predict", two) == {"inputs": {"x": [1], "y": ["s"]}}
    with pytest.raises(BadRequest, match="request tensor"):
        tf_request_from_oip(
            "predict", {"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1]}]}
        )
    with pytest.raises(UnsupportedByProtocol):
        tf_request_from_oip("classify", one)
    assert oip_response_from_tf("m", {"outputs": {"p": [0.5, 0.25]}}) == {
        "model_name": "m",
        "outputs": [{"name": "p", "shape": [2], "datatype": "FP64", "data": [0.5, 0.25]}],
    }
    assert oip_response_from_tf("m", {"predictions": [[1, 2]]})["outputs"] == [
        {"name": "output", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}
    ]
    with pytest.raises(GarbageResponse):
        oip_response_from_tf("m", {"results": []})
    with pytest.raises(GarbageResponse, match="no tensor"):
        oip_response_from_tf("m", {"outputs": [[1], [2, 3]]})


@pytest.mark.parametrize(
    ("outputs", "error", "fragment"),
    [
        ([None], GarbageResponse, "not an OIP tensor"),
        (
            [{"name": "y", "shape": [1], "datatype": "FP64", "data": ["x"]}],
            GarbageResponse,
            "not FP64",
        ),
        (
            [{"name": "y", "shape": [1], "datatype": "INT64", "data": [{}]}],
            GarbageResponse,
            "not INT64",
        ),
        (
            [{"name": "y", "shape": [2], "datatype": "FP64", "data": [1, "nan"]}],
            NonFiniteOutput,
            r"y\[1\] = nan",
        ),
    ],
)
def test_odd_output_tensors_are_garbage_not_crashes(
    outputs: list[object], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        tf_output_from_oip({"instances": [1]}, {"outputs": outputs})
