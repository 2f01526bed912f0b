"""Request-body parsing with TF Serving's checks and wording, without a server."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mulambda.emulator.payloads import (
    examples_payload,
    is_b64,
    json_snippet,
    json_type_name,
    parse_document,
    predict_payload,
)
from mulambda.protocols.tfserving import BadRequest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "Null"),
        (True, "True"),
        (False, "False"),
        ({}, "Object"),
        ([], "Array"),
        ("s", "String"),
        (1, "Number"),
        (1.5, "Number"),
    ],
)
def test_json_type_names_are_rapidjsons(value: Any, name: str) -> None:
    assert json_type_name(value) == name


def test_snippets_are_json_and_cut() -> None:
    assert json_snippet({"a": [1, 2]}) == '{"a":[1,2]}'
    long = json_snippet("x" * 500, limit=10)
    assert long == '"xxxxxxxxx...'


def test_b64_objects_have_exactly_one_string_key() -> None:
    assert is_b64({"b64": "AA=="})
    assert not is_b64({"b64": 1})
    assert not is_b64({"b64": "AA==", "other": 1})
    assert not is_b64(["b64"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"  ", "JSON Parse error: The document is empty"),
        (b"{", "JSON Parse error: "),
        (b"[1]", "JSON Value: [1] Is not object"),
    ],
)
def test_bodies_must_be_json_objects(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_document(raw)


def test_a_json_object_is_returned_as_is() -> None:
    assert parse_document(b'{"instances": [1]}') == {"instances": [1]}


def test_predict_payload_tells_row_from_columnar() -> None:
    assert predict_payload({"instances": [1, 2]}) == ([1, 2], True)
    assert predict_payload({"inputs": {"x": 1}}) == ({"x": 1}, False)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [1], "inputs": 1}, "expecting only one of 'inputs' or 'instances'"),
        ({"instances": 1}, "Excepting 'instances' to be an list/array"),
        ({"instances": []}, "No values in 'instances' array"),
    ],
)
def test_bad_predict_bodies(document: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        predict_payload(document)


def test_examples_payload_returns_context_and_examples() -> None:
    document = {"context": {"feature": 1}, "examples": [{"data": [1]}]}
    assert examples_payload(document, "regress") == ({"feature": 1}, [{"data": [1]}])
    assert examples_payload({"examples": [{}]}, "classify") == ({}, [{}])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"examples": [{}], "context": []}, "Example must be JSON object but got JSON Array"),
        ({}, "When method is classify, key 'examples' is expected and was not found"),
        ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
        ({"examples": []}, "'examples' value is an empty array"),
        ({"examples": [1]}, "Example must be JSON object but got JSON Number"),
    ],
)
def test_bad_examples_bodies(document: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        examples_payload(document, "classify")
