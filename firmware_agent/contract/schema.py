"""The JSON Schemas of the v1 MQTT contract, and :func:`validate` against them.

The schemas (JSON Schema 2020-12) ship inside this package, in ``schemas/``, the one
real copy (``docs/schemas`` is a link to it, and docs/asyncapi.yaml refers to them).
They are read with :mod:`importlib.resources`, so the same code works from a source
tree, an editable install or a wheel. A kind is a schema's file name without
``.schema.json``: ``telemetry-batch`` (a decoded batch), ``events``, ``pod``, ``status``,
``ack``, ``config``, ``model``, ``manifest``, ``fleetstream-position``,
``fleetstream-event`` and ``fleetstream-pod``; ``defs`` holds shared definitions only.

The schemas check the shape of a message; what a schema cannot say (a batch's seq
ranges, a POD's signature and hash chain) is the codec's and ingest's job.

:func:`validate` first asks a compiled validator (jsonschema-rs) whether the message is
valid, which is fast; only when it says no does :mod:`jsonschema`, the reference
implementation, look at the message, and its verdict (and error message) is the one that
counts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from functools import cache
from importlib.resources import files
from typing import Any, Final
from urllib.parse import urldefrag, urljoin

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from firmware_agent.contract.errors import SchemaError, UnknownSchemaError

_SUFFIX: Final = ".schema.json"
_DEFS: Final = "defs"
_REASON_MAX_CHARS = 300
# Errors that only say "something below failed" (their context holds the real ones) or
# "keys left over" (also raised when a oneOf branch failed and so evaluated nothing).
_WEAK: Final = frozenset({"anyOf", "oneOf", "unevaluatedProperties", "allOf", "$ref"})


@cache
def _documents() -> dict[str, dict[str, Any]]:
    folder = files("firmware_agent.contract").joinpath("schemas")
    docs: dict[str, dict[str, Any]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(_SUFFIX):
            docs[entry.name.removesuffix(_SUFFIX)] = json.loads(entry.read_text("utf-8"))
    return docs


def kinds() -> tuple[str, ...]:
    """Every kind :func:`validate` knows, sorted."""
    return tuple(sorted(k for k in _documents() if k != _DEFS))


def schema(kind: str) -> dict[str, Any]:
    """A copy of the schema of ``kind``; :class:`UnknownSchemaError` for no such kind."""
    docs = _documents()
    if kind not in docs or kind == _DEFS:
        raise UnknownSchemaError(f"no schema {kind!r}; known: {', '.join(kinds())}")
    return copy.deepcopy(docs[kind])


@cache
def _registry() -> Registry[Any]:
    # Every schema under its $id, so relative $refs between the files resolve offline.
    resources = [(doc["$id"], Resource.from_contents(doc)) for doc in _documents().values()]
    return Registry().with_resources(resources).crawl()


@cache
def _inlined(kind: str) -> dict[str, Any]:
    # The schema with its $refs inlined: jsonschema resolves a $ref (URL join, registry
    # lookup) at every use, which made validation of a telemetry batch cost ~0.3 ms per
    # fix. Shared by both validators; neither changes it.
    doc = schema(kind)
    inlined: dict[str, Any] = _inline_refs(
        doc, doc["$id"], {d["$id"]: d for d in _documents().values()}, ()
    )
    return inlined


@cache
def _validator(kind: str) -> Draft202012Validator:
    # The reference. The registry stays for a $ref left in place (a cycle).
    return Draft202012Validator(
        _inlined(kind),
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


# Profiling the ingest worker found ~1.4 ms per message in jsonschema's iter_errors,
# mostly unevaluatedProperties, even for valid messages. So a message first goes to a
# validator compiled by jsonschema-rs, from the same inlined schema, and one it holds
# valid is accepted at once. jsonschema stays the reference: the compiled validator is
# only a fast accept, and whatever it rejects (or cannot read) goes through jsonschema,
# which then reports the error or, finding none, accepts the message after all. The
# compiled one must never be the laxer of the two (tests/test_contract_fast.py holds
# them to that). It checks formats, so it is at least as strict on date-time and uri,
# which jsonschema skips without their optional checkers installed; it is stricter on
# NaN and infinity, and its ECMA-262 "$" does not match before a final newline as
# Python's does. It reads JSON values only: a tuple it would take for an array, an Enum
# for its value, jsonschema for neither.
@cache
def _fast_validator(kind: str) -> jsonschema_rs.Validator | None:
    """The compiled validator of ``kind``; ``None`` when the inlined schema still holds
    a ``$ref`` (a cycle), which jsonschema-rs would try to fetch over the network."""
    inlined = _inlined(kind)
    if _holds_ref(inlined):
        return None
    return jsonschema_rs.validator_for(inlined, validate_formats=True)


def _holds_ref(node: Any) -> bool:
    if isinstance(node, list):
        return any(_holds_ref(item) for item in node)
    if isinstance(node, dict):
        return "$ref" in node or any(_holds_ref(v) for v in node.values())
    return False


def _inline_refs(node: Any, base: str, by_id: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """``node`` with every ``$ref`` replaced by the schema it points to (resolved against
    ``base``); a ``$ref`` with sibling keywords becomes an ``allOf`` next to them, which
    2020-12 evaluates alike (``unevaluatedProperties`` sees into both)."""
    if isinstance(node, list):
        return [_inline_refs(item, base, by_id, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    out = {k: _inline_refs(v, base, by_id, seen) for k, v in node.items() if k != "$ref"}
    if not isinstance(ref, str):
        return out
    target_url = urljoin(base, ref)
    url, fragment = urldefrag(target_url)
    if target_url in seen or url not in by_id:
        return {**out, "$ref": target_url}  # recursive or external: left to the registry
    target: Any = by_id[url]
    for part in (p for p in fragment.split("/") if p):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    inlined = _inline_refs(target, url, by_id, (*seen, target_url))
    if all(k in ("description", "title") for k in out):
        return inlined
    return {**out, "allOf": [*out.get("allOf", []), inlined]}


def prepare() -> None:
    """Build every kind's validators now (tens of ms of CPU): a long-running consumer
    calls it at start, off its event loop, so that no first message pays for it."""
    for kind in kinds():
        _validator(kind)
        _fast_validator(kind)


def validate(kind: str, message: Any) -> None:
    """Return if ``message`` (a JSON value) fits the schema of ``kind``.

    Otherwise :class:`SchemaError` naming the failing location as a JSON path
    (``events: $.record.stop_id: '1' is not of type 'integer'``), the most telling of
    the errors when there are several. :class:`UnknownSchemaError` for an unknown kind.
    """
    fast = _fast_validator(kind)
    if fast is not None and _fast_accepts(fast, message):
        return
    error = _most_telling(_validator(kind).iter_errors(message))
    if error is not None:
        reason = error.message
        if len(reason) > _REASON_MAX_CHARS:
            reason = reason[: _REASON_MAX_CHARS - 3] + "..."
        raise SchemaError(kind, error.json_path, reason)


def _fast_accepts(fast: jsonschema_rs.Validator, message: Any) -> bool:
    try:
        return fast.is_valid(message)
    except ValueError:  # no JSON value (bytes, a key not a string): jsonschema says why
        return False


def _most_telling(errors: Iterable[ValidationError]) -> ValidationError | None:
    """The error a person should read first.

    jsonschema's ``best_match`` prefers shallow errors, so a record missing one field
    reads "not valid under any of the given schemas" or, worse, every key reported as
    unevaluated. Here a concrete error beats a weak one, and inside a ``oneOf`` whose
    branches are told apart by ``type`` (the events record) only the branch of the
    record's own type is read.
    """
    best = min(errors, key=_rank, default=None)
    while best is not None and best.context:
        best = min(_matching_branches(best.context), key=_rank)
    return best


def _rank(error: ValidationError) -> tuple[bool, bool, int]:
    return (error.validator in _WEAK, error.validator == "unevaluatedProperties", len(error.path))


def _matching_branches(context: Sequence[ValidationError]) -> Sequence[ValidationError]:
    # A branch whose "type" const failed is about another kind of record.
    other = {
        e.schema_path[0]
        for e in context
        if e.validator == "const" and list(e.relative_path) == ["type"]
    }
    rest = [e for e in context if e.schema_path[0] not in other]
    return rest or context
