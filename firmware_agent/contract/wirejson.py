"""The JSON of the wire: one strict reader and one writer for every JSON payload.

:func:`dumps` writes compact UTF-8 (no ``\\u`` escapes for non-ASCII text), refuses
NaN and infinity, and bounds size and nesting; :func:`loads` reads only what
:func:`dumps` could have written: UTF-8 (never guessed), a JSON object, no duplicate
keys (two parsers may keep different copies of a repeated key), no NaN or infinity, no
lone surrogates (JSON escapes allow them, UTF-8 and PostgreSQL do not), bounded size
and nesting. Both raise :class:`~.errors.CodecError` and nothing else.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, TypeGuard

from firmware_agent.contract.errors import CodecError

MAX_JSON_BYTES: Final = 64 * 1024  # an event or POD is well under 2 KiB
MAX_JSON_DEPTH: Final = 32

# What decoders take: an MQTT client hands over bytes or a bytearray (paho: bytes).
Payload = bytes | bytearray | memoryview


def dumps(obj: dict[str, Any], what: str) -> bytes:
    """``obj`` as compact UTF-8 JSON; :class:`CodecError` naming ``what`` if it cannot be."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        payload = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:
        # TypeError: a value JSON has no form for; ValueError: NaN or infinity, or a
        # lone surrogate (UnicodeEncodeError) that no UTF-8 consumer could read.
        raise CodecError(f"{what}: cannot encode: {err}") from None
    if len(payload) > MAX_JSON_BYTES:
        raise CodecError(f"{what}: {len(payload)} bytes, at most {MAX_JSON_BYTES}")
    check_tree(obj, what)
    return payload


def loads(payload: object, what: str) -> dict[str, Any]:
    """The JSON object in ``payload`` (bytes-like); :class:`CodecError` for anything else."""
    buf = as_bytes(payload, what)
    if len(buf) > MAX_JSON_BYTES:
        raise CodecError(f"{what}: {len(buf)} bytes, at most {MAX_JSON_BYTES}")
    try:
        # Decoded here, not by json.loads: it would guess UTF-16/32 from the first bytes.
        text = buf.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CodecError(f"{what}: not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as err:
        # ValueError: bad JSON, duplicate keys, NaN, overlong integers; RecursionError:
        # nesting deeper than the parser's stack.
        raise CodecError(f"{what}: invalid JSON: {str(err)[:200]}") from None
    if not isinstance(obj, dict):
        raise CodecError(f"{what}: not a JSON object")
    # The walk only where the text can hold what it looks for: a lone surrogate comes
    # only from a \uD800-\uDFFF escape (UTF-8 cannot carry one), and the nesting is at
    # most the brackets there are. Most messages skip it.
    if "\\ud" in text or "\\uD" in text or text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        check_tree(obj, what)
    return obj


def as_bytes(payload: object, what: str) -> bytes:
    """``payload`` as bytes if it is bytes-like; :class:`CodecError` otherwise (text
    included: a payload is bytes on the wire)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    raise CodecError(f"{what}: payload must be bytes, not {type(payload).__name__}")


def check_tree(obj: object, what: str) -> None:
    """Bounded nesting, and strings that re-encode as UTF-8 (no lone surrogates)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, what)
        elif isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise CodecError(f"{what}: nested deeper than {MAX_JSON_DEPTH}")
            if isinstance(node, dict):
                for key, value in node.items():
                    _check_text(key, what)
                    stack.append((value, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _check_text(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CodecError(f"{what}: a string holds a lone surrogate") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


def finite_number(value: object) -> TypeGuard[int | float]:
    """Whether a decoded JSON value is a number (a bool is not) that a float holds
    finitely. An integer beyond the largest float is not: :func:`loads` reads 10^400 as
    an integer, and ``math.isfinite`` raises OverflowError on it rather than say False."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value
