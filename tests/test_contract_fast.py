"""The compiled validator in front of jsonschema (firmware_agent.contract.schema).

jsonschema is the reference; the validator jsonschema-rs compiles from the same inlined
schema only accepts fast. It may be the stricter of the two (it checks formats such as
``date-time``, which jsonschema skips without its optional checkers), never the laxer:
every example of docs/asyncapi.yaml, and many broken copies of each, are held to that.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from firmware_agent.contract import schema
from firmware_agent.contract.errors import SchemaError

ROOT = Path(__file__).resolve().parents[1]
ASYNCAPI: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text("utf-8"))
BAD_TIME = "2026-13-45T99:00:00Z"  # the schemas' UTC pattern, but no date-time
UNKNOWN = "surprise"


def examples() -> Iterator[tuple[str, str, Any]]:
    """(kind, name, payload) of every example in the AsyncAPI document."""
    for message_id, message in ASYNCAPI["components"]["messages"].items():
        ref = str(message["payload"]["$ref"])
        kind = ref.removeprefix("./schemas/").removesuffix(".schema.json")
        for example in message.get("examples", []):
            yield kind, f"{message_id}/{example['name']}", example["payload"]


EXAMPLES = list(examples())


def wrong_values(value: Any) -> list[Any]:
    """Values of another type than ``value``, or of its type but likely out of range."""
    out: list[Any] = [None, {UNKNOWN: 1}, [value]]
    if isinstance(value, bool):
        out += [int(value), str(value).lower()]
    elif isinstance(value, int):
        out += [str(value), float(value) + 0.5, True, -1, 0, 2**63, 2**64, math.nan]
    elif isinstance(value, float):
        out += [str(value), -1e300, 1e300, math.inf, math.nan]
    elif isinstance(value, str):
        out += [1, "", BAD_TIME, value + "\x00", value + "\n", value.upper() + " ", "x" * 300]
    elif isinstance(value, list):
        out += [{}, value * 2 if value else [{}]]
    elif isinstance(value, dict):
        out += [[], {}]
    return out


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key or index below ``node``, as a path from it (the first two of a list)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node[:2]):
            yield (*prefix, i)
            yield from paths(value, (*prefix, i))


def mutated(payload: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``payload`` with ``path`` set to ``value`` (``...``: deleted)."""
    doc = copy.deepcopy(payload)
    *parents, last = path
    node = doc
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


def messages(payload: Any) -> Iterator[Any]:
    """``payload``, and copies of it with one key dropped, nulled or given a wrong value,
    or one unknown key added, at every depth."""
    yield payload
    for path in paths(payload):
        node = payload
        for part in path:
            node = node[part]
        if isinstance(path[-1], str):
            yield mutated(payload, path, ...)
        for value in wrong_values(node):
            yield mutated(payload, path, value)
    for path in [(), *paths(payload)]:
        node = payload
        for part in path:
            node = node[part]
        if isinstance(node, dict):
            yield mutated(payload, (*path, UNKNOWN), 1)


def cases(kind: str) -> Iterator[tuple[str, Any]]:
    """The examples of ``kind`` and their mutations, and the examples of all other kinds."""
    for own_kind, name, payload in EXAMPLES:
        if own_kind == kind:
            for n, message in enumerate(messages(payload)):
                yield f"{name}#{n}", message
        else:
            yield name, payload


def jsonschema_reads_less(node: Any) -> bool:
    """Whether ``node`` holds a value jsonschema checks less strictly than jsonschema-rs
    for reasons other than formats: NaN or infinity (no JSON numbers, but numbers to
    jsonschema), or a string ending in a newline (Python's ``$`` matches before it)."""
    if isinstance(node, float):
        return not math.isfinite(node)
    if isinstance(node, str):
        return node.endswith("\n")
    if isinstance(node, dict):
        return any(jsonschema_reads_less(v) for v in node.values())
    if isinstance(node, list):
        return any(jsonschema_reads_less(v) for v in node)
    return False


@pytest.fixture(scope="module")
def no_formats() -> dict[str, jsonschema_rs.Validator]:
    """Each kind's compiled validator as the fast one, but blind to formats."""
    return {
        kind: jsonschema_rs.validator_for(schema._inlined(kind), validate_formats=False)
        for kind in schema.kinds()
    }


def test_every_kind_has_a_compiled_validator() -> None:
    assert EXAMPLES
    for kind in schema.kinds():
        assert schema._fast_validator(kind) is not None, kind


@pytest.mark.parametrize("kind", schema.kinds())
def test_compiled_validator_is_never_laxer_than_jsonschema(
    kind: str, no_formats: dict[str, jsonschema_rs.Validator]
) -> None:
    fast = schema._fast_validator(kind)
    assert fast is not None
    reference = schema._validator(kind)
    seen = {True: 0, False: 0}
    for name, message in cases(kind):
        valid = reference.is_valid(message)
        seen[valid] += 1
        quick = schema._fast_accepts(fast, message)
        assert not (quick and not valid), (name, message)
        if valid and not quick:
            # Allowed only where jsonschema checks less: a format, or what
            # jsonschema_reads_less names.
            blind = schema._fast_accepts(no_formats[kind], message)
            assert blind or jsonschema_reads_less(message), (
                name,
                message,
            )
        # validate() says what the reference says, whichever validator answered.
        if valid:
            schema.validate(kind, message)
        else:
            with pytest.raises(SchemaError):
                schema.validate(kind, message)
    assert seen[True], seen
    assert seen[False] > 50, seen


def test_a_bad_date_time_is_caught_by_the_compiled_validator_only() -> None:
    # jsonschema here has no date-time checker: the schemas' pattern is all it reads.
    doc = next(p for k, _, p in EXAMPLES if k == "status")
    message = {**doc, "time": BAD_TIME}
    fast = schema._fast_validator("status")
    assert fast is not None
    assert not fast.is_valid(message)
    assert schema._validator("status").is_valid(message)
    schema.validate("status", message)  # the reference decides


def event(n: int = 0) -> dict[str, Any]:
    payload = ASYNCAPI["components"]["messages"]["eventRecord"]["examples"][n]["payload"]
    return copy.deepcopy(payload)


def test_rejections_read_as_before() -> None:
    doc = event()
    doc["record"]["visit"] = "1"
    with pytest.raises(SchemaError) as info:
        schema.validate("events", doc)
    assert str(info.value) == "events: $.record.visit: '1' is not of type 'integer'"
    assert (info.value.kind, info.value.path) == ("events", "$.record.visit")

    ack = copy.deepcopy(ASYNCAPI["components"]["messages"]["ack"]["examples"][0]["payload"])
    ack["acks"]["status"] = 1
    with pytest.raises(SchemaError) as info:
        schema.validate("ack", ack)
    assert str(info.value) == (
        "ack: $.acks: Additional properties are not allowed ('status' was unexpected)"
    )
    with pytest.raises(SchemaError, match=r"^ack: \$: \[\] is not of type 'object'$"):
        schema.validate("ack", [])


def test_what_the_compiled_validator_cannot_read_goes_to_jsonschema() -> None:
    # jsonschema-rs raises ValueError on a value no JSON has; the reference reports it.
    with pytest.raises(SchemaError, match=r"^ack: \$: Additional properties"):
        schema.validate("ack", {1: 2})
    doc = event()
    doc["device_id"] = b"van-0001"
    with pytest.raises(SchemaError, match=r"^events: \$\.device_id: b'van-0001' is not of"):
        schema.validate("events", doc)


def test_valid_messages_never_reach_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in schema.kinds():
        schema._fast_validator(kind)  # compiled (and cached) first

    def refuse(kind: str) -> Any:
        raise AssertionError(f"jsonschema asked about a valid {kind} message")

    monkeypatch.setattr(schema, "_validator", refuse)
    for kind, _, payload in EXAMPLES:
        schema.validate(kind, payload)
    doc = event()
    doc["record"]["visit"] = "1"
    with pytest.raises(AssertionError, match="jsonschema asked"):
        schema.validate("events", doc)
