"""Hypothesis strategies for wire documents, generated from the published JSON Schemas.

:func:`documents` draws JSON documents a schema accepts (every keyword the generated
schemas use: ``$ref``, ``anyOf``, ``enum``, types with their bounds, lengths, patterns and
the ``date-time``/``base64url`` formats); :func:`mutations` breaks one of them in one
place (a field deleted, replaced by another JSON value, a string made too long, a number
pushed out of range, an unknown field added). The schema/model differential
(``tests/unit/wire/test_schemas.py``) and the hostile input suite (``tests/fuzz``) use
them, so both draw from what the models publish rather than from hand-written examples.

Values the generators never draw, because there the schema and the model are known to
disagree by design (each has a test of its own in ``test_schemas.py``): strings ending in
a newline (Python's ``re`` lets ``$`` match before it, ECMA-262 and the model do not),
floats with no fraction in integer fields (JSON Schema counts ``5.0`` as an integer, the
strict model does not) and date-times in the model's laxer syntaxes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from mulambda.wire.catalog import packaged_dir
from mulambda.wire.events import WireModel

JSON = Any
Path = tuple[str | int, ...]

_OFFSETS = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30))]
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def schema_of(model: type[WireModel]) -> dict[str, Any]:
    """The published JSON Schema of ``model`` (the packaged copy)."""
    text = (packaged_dir() / "schemas" / f"{model.type_name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def text(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Free text, never ending in a newline (see the module docstring)."""
    return st.text(min_size=min_size, max_size=max_size).filter(lambda s: not s.endswith("\n"))


def fractional_floats() -> st.SearchStrategy[float]:
    """Finite floats with a fraction (``5.0`` is an integer to JSON Schema)."""
    return st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda f: f != int(f))


def json_values() -> st.SearchStrategy[JSON]:
    """Any small JSON value (of the kinds above)."""
    scalars = st.none() | st.booleans() | st.integers() | fractional_floats() | text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text(), inner, max_size=3),
        max_leaves=6,
    )


def date_times() -> st.SearchStrategy[str]:
    """RFC 3339 date-times with an offset."""
    return st.builds(
        lambda moment, offset: moment.replace(tzinfo=offset).isoformat(),
        st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)),
        st.sampled_from(_OFFSETS),
    )


def documents(schema: dict[str, Any]) -> st.SearchStrategy[JSON]:
    """Documents ``schema`` accepts."""
    return _node(schema, schema)


def _node(node: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[JSON]:
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        return _node(root["$defs"][name], root)
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "const" in node:
        return st.just(node["const"])
    kind = node.get("type")
    if kind is None and "anyOf" in node:
        return st.one_of([_node(alternative, root) for alternative in node["anyOf"]])
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return st.integers(node.get("minimum", -(2**53)), node.get("maximum", 2**53))
    if kind == "number":
        low = node.get("exclusiveMinimum", node.get("minimum", -1e12))
        return st.floats(
            min_value=low,
            max_value=node.get("maximum", 1e12),
            exclude_min="exclusiveMinimum" in node,
            allow_nan=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_node(node.get("items", {}), root), max_size=3)
    if kind == "object":
        return _object(node, root)
    return json_values()


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    fmt = node.get("format")
    if fmt == "date-time":
        return date_times()
    if fmt == "base64url":
        return st.binary(max_size=24).map(lambda b: base64.urlsafe_b64encode(b).decode())
    low, high = node.get("minLength", 0), node.get("maxLength", 40)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True, alphabet=_PRINTABLE).filter(
            lambda s: low <= len(s) <= high
        )
    return text(low, min(high, 40))


def _object(node: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[JSON]:
    properties: dict[str, Any] = node.get("properties", {})
    required = set(node.get("required", ()))
    if not properties:
        # A free-form object (an inference body or output), with one of the keys an
        # ``anyOf`` of ``required`` lists may demand.
        needed = [alt["required"] for alt in node.get("anyOf", ()) if "required" in alt]
        free = st.dictionaries(text(), json_values(), max_size=3)
        if not needed:
            return free
        return st.builds(
            lambda extra, keys, value: {**extra, **dict.fromkeys(keys, value)},
            free,
            st.sampled_from(needed),
            json_values(),
        )
    return st.fixed_dictionaries(
        {k: _node(v, root) for k, v in properties.items() if k in required},
        optional={k: _node(v, root) for k, v in properties.items() if k not in required},
    )


def paths(document: JSON, prefix: Path = ()) -> Iterator[Path]:
    """Every position in ``document`` below its root."""
    if isinstance(document, dict):
        items: Any = document.items()
    elif isinstance(document, list):
        items = enumerate(document)
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def _at(document: JSON, path: Path) -> Any:
    for step in path:
        document = document[step]
    return document


def _parent(document: JSON, path: Path) -> Any:
    return _at(document, path[:-1])


MUTATIONS = ("delete", "replace", "lengthen", "out-of-range", "unknown-field")
"""The ways :func:`mutations` breaks a document (``unknown-field`` breaks nothing)."""


@st.composite
def mutations(draw: st.DrawFn, schema: dict[str, Any]) -> tuple[JSON, str]:
    """A document of ``schema`` changed in one place, and what was done where."""
    document = draw(documents(schema))
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "unknown-field":
        objects = [p for p in [(), *paths(document)] if isinstance(_at(document, p), dict)]
        at = draw(st.sampled_from(objects))
        target = _at(document, at)
        name = draw(text().filter(lambda s: s not in target))
        target[name] = draw(json_values())
        return document, f"{kind} {name!r} at {at}"
    places = list(paths(document))
    if not places:
        return document, "unchanged (empty document)"
    at = draw(st.sampled_from(places))
    parent, last = _parent(document, at), at[-1]
    if kind == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif kind == "replace":
        parent[last] = draw(json_values())
    elif kind == "lengthen":
        value = parent[last]
        parent[last] = (value * 5000)[:5000] if isinstance(value, str) and value else "x" * 5000
    else:
        parent[last] = draw(st.sampled_from([-1, -0.5, 0, 1.5, 10**12, 2**70, -1e-300]))
    return document, f"{kind} at {at}"


__all__ = [
    "MUTATIONS",
    "date_times",
    "documents",
    "fractional_floats",
    "json_values",
    "mutations",
    "paths",
    "schema_of",
    "text",
]
