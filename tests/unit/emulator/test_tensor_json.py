"""TF Serving's JSON ↔ tensor mapping, on plain values and numpy arrays (no TensorFlow)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mulambda.emulator.tensor_json import columnar_feeds, decode_b64, outputs_json, row_feeds
from mulambda.protocols.tfserving import BadRequest

pytestmark = pytest.mark.unit

ONE = {"x": object()}
TWO = {"x": object(), "tag_bytes": object()}


def test_row_feeds_stack_instances_per_input() -> None:
    assert row_feeds([[1, 2], [3, 4]], ONE) == {"x": [[1, 2], [3, 4]]}
    instances = [{"x": [1], "tag_bytes": {"b64": "AA=="}}, {"x": [2], "tag_bytes": "s"}]
    assert row_feeds(instances, TWO) == {"x": [[1], [2]], "tag_bytes": [{"b64": "AA=="}, "s"]}


@pytest.mark.parametrize(
    ("instances", "specs", "message"),
    [
        ([[1]], TWO, "instances is a plain list, but expecting list of objects"),
        ([1, {"a": 1}], ONE, "Expecting value/list but got object at item 1 of input list"),
        ([{"x": 1, "tag_bytes": 1}, [1]], TWO, "Expecting object but got list at item 1"),
        ([{"x": 1, "y": 2}], TWO, "key: y of 'instances' list. Error: JSON object: does not"),
        ([{"x": 1}], TWO, "must only have keys: tag_bytes,x"),
    ],
)
def test_row_feeds_refuse_what_tf_serving_refuses(
    instances: list[Any], specs: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        row_feeds(instances, specs)


def test_columnar_feeds_take_a_value_or_named_inputs() -> None:
    assert columnar_feeds([[1, 2]], ONE) == {"x": [[1, 2]]}
    assert columnar_feeds({"b64": "AA=="}, ONE) == {"x": {"b64": "AA=="}}
    assert columnar_feeds({"x": 1, "tag_bytes": "a", "extra": 0}, TWO) == {"x": 1, "tag_bytes": "a"}
    with pytest.raises(BadRequest, match="expecting an object as multiple input"):
        columnar_feeds([1], TWO)
    with pytest.raises(BadRequest, match=re.escape("Missing named input: tag_bytes in 'inputs'")):
        columnar_feeds({"x": 1}, TWO)


def test_b64_is_decoded_at_any_depth() -> None:
    assert decode_b64([{"b64": "aGk="}, ["plain", {"b64": ""}]], "t") == [b"hi", ["plain", b""]]
    with pytest.raises(BadRequest, match="not formatted correctly for base64 data"):
        decode_b64({"b64": "aGk=", "x": 1}, "t")
    with pytest.raises(BadRequest, match="Unable to base64 decode"):
        decode_b64({"b64": "***"}, "t")


def test_outputs_become_json_values() -> None:
    np = pytest.importorskip("numpy")
    arrays = {
        "y": np.asarray([0.1, 2.5], dtype=np.float32),
        "echo_bytes": np.asarray([b"\x00", b"a"], dtype=object),
        "label": np.asarray([b"cat", b"dog"], dtype=object),
    }
    # Float32 in shortest round-trip form: 0.1, not 0.10000000149011612.
    assert outputs_json({"y": arrays["y"]}, row=True) == [0.1, 2.5]
    assert outputs_json(arrays, row=False) == {
        "echo_bytes": [{"b64": "AA=="}, {"b64": "YQ=="}],
        "label": ["cat", "dog"],
        "y": [0.1, 2.5],
    }
    assert outputs_json(arrays, row=True) == [
        {"echo_bytes": {"b64": "AA=="}, "label": "cat", "y": 0.1},
        {"echo_bytes": {"b64": "YQ=="}, "label": "dog", "y": 2.5},
    ]


def test_row_outputs_need_one_batch_size() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(BadRequest, match="has no shape information"):
        outputs_json({"a": np.asarray(1.0)}, row=True)
    with pytest.raises(BadRequest, match="has invalid batch size: 0"):
        outputs_json({"a": np.zeros((0, 2))}, row=True)
    with pytest.raises(BadRequest, match="inconsistent batch size: 3 expecting: 2"):
        outputs_json({"a": np.zeros(2), "b": np.zeros(3)}, row=True)
