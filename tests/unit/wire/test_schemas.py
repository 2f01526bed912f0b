"""The published JSON Schemas and the wire models agree, checked with a real validator.

Both ways, on a corpus generated from the schemas (``tests/strategies.py``): every
document a schema accepts, the model accepts, and what the model makes of it validates
again; every mutated document gets the same verdict from both (accepted by both, or
refused by both). The few rules where they differ by design are pinned by the tests at
the end, so a change on either side shows up here.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from mulambda.errors import DecodeError
from mulambda.wire.codec import decode, encode
from mulambda.wire.events import (
    ALL_MESSAGE_TYPES,
    DeadLetter,
    InferenceRequest,
    SelectionRequest,
    WireModel,
)
from tests.factories import one_of_each
from tests.strategies import documents, mutations, schema_of

pytestmark = pytest.mark.unit

CONSUMED = [m for m in ALL_MESSAGE_TYPES if m is not DeadLetter]
"""Messages some MuLambda reader decodes (dead letters are for operators)."""

CORPUS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@functools.cache
def validator(model: type[WireModel]) -> Draft202012Validator:
    """A 2020-12 validator of the model's published schema that checks formats too."""
    schema = schema_of(model)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def dumps(document: Any) -> bytes:
    """JSON bytes; the standard library, since orjson refuses integers beyond 64 bits."""
    return json.dumps(document).encode()


def model_accepts(model: type[WireModel], document: Any) -> bool:
    try:
        decode(model, dumps(document))
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("model", CONSUMED, ids=lambda m: m.type_name)
@given(data=st.data())
@CORPUS
def test_what_the_schema_accepts_the_model_accepts(model: type[WireModel], data: Any) -> None:
    document = data.draw(documents(schema_of(model)))
    check = validator(model)
    assert check.is_valid(document)
    message = decode(model, dumps(document))
    # What the model makes of it (defaults filled in) is a schema-valid document again.
    assert check.is_valid(orjson.loads(encode(message)))


@pytest.mark.parametrize("model", CONSUMED, ids=lambda m: m.type_name)
@given(data=st.data())
@CORPUS
def test_mutated_documents_get_the_same_verdict_from_both(
    model: type[WireModel], data: Any
) -> None:
    document, change = data.draw(mutations(schema_of(model)))
    by_schema = validator(model).is_valid(document)
    by_model = model_accepts(model, document)
    assert by_schema == by_model, (
        f"{change}: schema {'accepts' if by_schema else 'refuses'}, model "
        f"{'accepts' if by_model else 'refuses'}: {document!r:.500}"
    )


@pytest.mark.parametrize("message", one_of_each(), ids=lambda m: type(m).__name__)
def test_every_message_the_platform_writes_validates(message: WireModel) -> None:
    assert validator(type(message)).is_valid(orjson.loads(encode(message)))


def test_the_validator_is_real_it_refuses_what_the_models_refuse() -> None:
    good = orjson.loads(encode(next(m for m in one_of_each() if isinstance(m, SelectionRequest))))
    check = validator(SelectionRequest)
    assert check.is_valid(good)
    for field, value in [
        ("schema_version", 99),
        ("top_k", "5"),
        ("deadline", "tomorrow"),
        ("deadline", "2030-01-01T12:00:00"),
        ("client_id", "has space"),
    ]:
        assert not check.is_valid({**good, field: value}), field
        assert not model_accepts(SelectionRequest, {**good, field: value}), field
    for nested, value in [("weights", {"latency": 1.5}), ("traits", {"model_type": "x"})]:
        assert not check.is_valid({**good, nested: value}), nested
    body = orjson.loads(encode(next(m for m in one_of_each() if isinstance(m, InferenceRequest))))
    assert not validator(InferenceRequest).is_valid({**body, "body": {"signature_name": "s"}})
    assert not model_accepts(InferenceRequest, {**body, "body": {"signature_name": "s"}})


# --- where schema and model differ by design ------------------------------------------


def _selection_request(**changes: Any) -> dict[str, Any]:
    request = next(m for m in one_of_each() if isinstance(m, SelectionRequest))
    return {**orjson.loads(encode(request)), **changes}


def test_gap_integral_floats_are_integers_to_json_schema_only() -> None:
    document = _selection_request(top_k=5.0)
    assert validator(SelectionRequest).is_valid(document)
    assert not model_accepts(SelectionRequest, document)  # strict: 5.0 is not a count


def test_gap_pythons_dollar_matches_before_a_trailing_newline() -> None:
    document = _selection_request(client_id="cl-1\n")
    assert validator(SelectionRequest).is_valid(document)  # Python re, not ECMA-262
    assert not model_accepts(SelectionRequest, document)


@pytest.mark.parametrize("lax", ["2030-01-01 12:00:00Z", "2030-01-01T12:00Z"])
def test_gap_the_model_reads_laxer_date_times_than_rfc_3339(lax: str) -> None:
    document = _selection_request(deadline=lax)
    assert not validator(SelectionRequest).is_valid(document)
    assert model_accepts(SelectionRequest, document)


def test_gap_base64_contents_are_the_models_to_check() -> None:
    letter = orjson.loads(encode(DeadLetter(topic="t", partition=0, offset=0, reason="r")))
    document = {**letter, "original_value": "not base64!"}
    assert validator(DeadLetter).is_valid(document)  # format base64url is not checked
    with pytest.raises(DecodeError):
        decode(DeadLetter, orjson.dumps(document))
    document["original_value"] = base64.urlsafe_b64encode(b"\x00\xff").decode()
    assert decode(DeadLetter, orjson.dumps(document)).original_value == b"\x00\xff"


def test_python_construction_stays_lax_only_decoding_is_strict() -> None:
    # Code building messages may pass "5"; bytes off the wire may not.
    request = SelectionRequest.model_validate(_selection_request(top_k="5"))
    assert request.top_k == 5
    with pytest.raises(ValidationError):
        SelectionRequest.model_validate_json(
            orjson.dumps(_selection_request(top_k="5")), strict=True
        )
