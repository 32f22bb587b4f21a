"""Reading pid-trt's JSON files: strict parsing and validation against the JSON Schemas shipped in the package.

`pid_trt/schemas/manifest.schema.json` describes an ONNX directory's manifest.json and
`pid_trt/schemas/sidecar.schema.json` an engine sidecar (docs/formats.md). Both formats are additive, so the
schemas allow keys they do not name. Every failure is one `PiDInputError` line that names the file and the field:
unreadable or non-UTF-8 files, invalid JSON, numbers JSON readers cannot hold (thousands of digits, NaN,
infinities), missing keys and values of the wrong type.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
from importlib import resources
from typing import Any

from pid_trt.errors import PiDInputError

SCHEMAS = ("manifest", "sidecar")
MAX_NUMBER_DIGITS = 100  # far beyond any real value; Python refuses ints over 4300 digits with a ValueError


class _BadNumber(str):
    """A number the reader refuses, kept as text until the walk that names its field."""


def _number(text: str) -> Any:
    if len(text) > MAX_NUMBER_DIGITS:
        return _BadNumber(f"a number with {len(text)} digits")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    return value if math.isfinite(value) else _BadNumber(f"{text[:20]} (not a finite float)")


def _constant(text: str) -> Any:
    return _BadNumber(f"{text} (JSON has no such number)")


def _first_bad(node: Any, path: tuple = ()) -> tuple[tuple, str] | None:
    if isinstance(node, _BadNumber):
        return path, str(node)
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if found := _first_bad(child, (*path, key)):
            return found
    return None


def field_name(path: tuple | list) -> str:
    """`graphs.cond.inputs[0].name` for the path ("graphs", "cond", "inputs", 0, "name")."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "the top level"


def parse_json(text: bytes | str, where: str) -> Any:
    """JSON from bytes or text (bytes must be UTF-8) with every number checked; PiDInputError naming the field."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_constant)
    except UnicodeDecodeError as e:
        raise PiDInputError(f"{where} is not UTF-8 text (byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise PiDInputError(f"{where} is not valid JSON ({str(e)[:120]})") from None
    if bad := _first_bad(obj):
        raise PiDInputError(f"{where}: field {field_name(bad[0])} holds {bad[1]}")
    return obj


def read_json(path: str | pathlib.Path, what: str, schema: str | None = None, hint: str = "") -> Any:
    """The JSON file `path` (`what` names it in messages), validated against `schema` when given."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PiDInputError(f"cannot read {what} {path}: {e.strerror or e}") from None
    obj = parse_json(data, f"{what} {path}")
    if schema is not None:
        validate(obj, schema, f"{what} {path}", hint)
    return obj


@functools.cache
def schema_text(name: str) -> dict[str, Any]:
    """The shipped JSON Schema `name` ("manifest" or "sidecar") as a dict."""
    path = resources.files("pid_trt").joinpath(f"schemas/{name}.schema.json")
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (schema_text(n)["$id"], Resource.from_contents(schema_text(n))) for n in SCHEMAS)
    return jsonschema.Draft202012Validator(schema_text(name), registry=registry)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


_ARTICLE = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
            "number": "a number", "boolean": "a boolean", "null": "null"}


def _describe(error) -> str:
    """One line for a jsonschema ValidationError: the field and what is wrong with it."""
    field = field_name(list(error.absolute_path))
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "required":
        missing = next((k for k in expected if isinstance(value, dict) and k not in value), expected[0])
        return f"lacks {field_name([*error.absolute_path, missing])}"
    if kind == "type":
        wanted = " or ".join(_ARTICLE[t] for t in (expected if isinstance(expected, list) else [expected]))
        return f"{f'field {field} ' if error.absolute_path else ''}must be {wanted}, not {_json_type(value)}"
    if kind in ("const", "enum"):
        options = [expected] if kind == "const" else expected
        return f"field {field} must be {' or '.join(json.dumps(o) for o in options)}, not {json.dumps(value)[:40]}"
    if kind == "pattern":
        return f"field {field} must be a sha256 (64 hex digits), not {json.dumps(value)[:40]}"
    return f"field {field}: {' '.join(error.message.split())[:120]}"


def validate(obj: Any, schema: str, where: str, hint: str = "") -> None:
    """PiDInputError (one line naming the field) unless `obj` satisfies the shipped schema `schema`."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(obj))
    if error is not None:
        raise PiDInputError(f"{where} {_describe(error)}{f'; {hint}' if hint else ''}")
