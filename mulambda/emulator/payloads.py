"""Request bodies of TF Serving's REST API: parsing, validation and TF Serving's wording.

Pure: functions here take decoded JSON (or raw bytes) and either return the parts a
request is made of or raise :class:`~mulambda.protocols.tfserving.BadRequest` with the
message TF Serving gives for the same body (``Missing 'inputs' or 'instances' key``,
``JSON Value: ... Is not object``, ...). Checks run in TF Serving's order, so the first
error a client sees is the same one TF Serving would report.
"""

from __future__ import annotations

from typing import Any

from mulambda.protocols.tfserving import BadRequest, decode_json, encode_json

__all__ = [
    "examples_payload",
    "is_b64",
    "json_snippet",
    "json_type_name",
    "parse_document",
    "predict_payload",
]


def json_snippet(value: Any, limit: int = 200) -> str:
    """A JSON rendering of ``value`` for error messages, cut to ``limit`` characters."""
    try:
        text = encode_json(value).decode()
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def json_type_name(value: Any) -> str:
    """RapidJSON's type name of a decoded value (as TF Serving's messages use them)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value: Any) -> bool:
    """Whether ``value`` is TF Serving's ``{"b64": "..."}`` encoding of binary data."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def parse_document(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; empty, unparsable or non-object bodies are 400."""
    if not raw.strip():
        raise BadRequest("JSON Parse error: The document is empty")
    try:
        document = decode_json(raw)
    except ValueError as exc:
        raise BadRequest(f"JSON Parse error: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"JSON Value: {json_snippet(document)} Is not object")
    return document


def predict_payload(document: dict[str, Any]) -> tuple[Any, bool]:
    """(payload, row?) of a predict body, with TF Serving's messages for bad shapes."""
    has_instances = "instances" in document
    has_inputs = "inputs" in document
    if has_instances and has_inputs:
        raise BadRequest(
            f"JSON Value: {json_snippet(document)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            # sic: TF Serving's wording
            raise BadRequest(
                f"JSON Value: {json_snippet(document)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise BadRequest(f"JSON Value: {json_snippet(document)} No values in 'instances' array")
        return instances, True
    if has_inputs:
        return document["inputs"], False
    raise BadRequest("Missing 'inputs' or 'instances' key")


def examples_payload(
    document: dict[str, Any], verb: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(context, examples) of a classify/regress body, validated as TF Serving does."""
    context: dict[str, Any] = {}
    if "context" in document:
        if not isinstance(document["context"], dict):
            raise BadRequest(
                f"Example must be JSON object but got JSON {json_type_name(document['context'])}"
            )
        context = document["context"]
    if "examples" not in document:
        raise BadRequest(
            f"JSON Value: {json_snippet(document)} When method is {verb}, key 'examples' is "
            "expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise BadRequest(
            f"JSON Value: {json_snippet(document)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise BadRequest(f"JSON Value: {json_snippet(document)} 'examples' value is an empty array")
    for example in examples:
        if not isinstance(example, dict):
            raise BadRequest(f"Example must be JSON object but got JSON {json_type_name(example)}")
    return context, examples
