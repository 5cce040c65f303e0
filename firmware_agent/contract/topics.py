"""MQTT topic names of the v1 contract (docs/asyncapi.yaml), built and parsed in one place.

Device topics live under ``fleet/v1/{device_id}/``: the uplink streams
(:data:`STREAMS`, each with its own sequence numbers) and ``status`` go up; ``ack``,
``manifest``, ``config`` and ``model`` come down. Ingest republishes what it accepted
under ``fleetstream/v1/{device_id}/{kind}``. A device id is the client certificate's CN
and must match :data:`DEVICE_ID_PATTERN`: it never contains ``/``, ``+`` or ``#``, so
it is always exactly one topic level.

Builders raise :class:`~firmware_agent.errors.CodecError` for a bad device id or leaf;
:func:`parse_topic` raises it for any topic outside the contract.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

from firmware_agent.contract.errors import CodecError

ROOT: Final = "fleet/v1"
STREAM_ROOT: Final = "fleetstream/v1"

Stream = Literal["telemetry", "events", "pod"]
STREAMS: Final[tuple[Stream, ...]] = ("telemetry", "events", "pod")
STATUS: Final = "status"
# Every stream numbers its records 1, 2, 3, ...; a signed 64-bit column in SQLite and
# PostgreSQL holds them.
MAX_SEQ: Final = 2**63 - 1
UPLINK_LEAVES: Final = (*STREAMS, STATUS)
DOWNLINK_KINDS: Final = ("ack", "manifest", "config", "model")
STREAM_KINDS: Final = ("position", "event", "pod")

DEVICE_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
# Longest valid topic: "fleetstream/v1/" + 64 + "/" + "position"; anything longer is
# rejected before any splitting, whatever a hostile broker hands over.
_MAX_TOPIC_CHARS = 128

_LEAVES: Final[dict[str, tuple[str, ...]]] = {
    ROOT: (*UPLINK_LEAVES, *DOWNLINK_KINDS),
    STREAM_ROOT: STREAM_KINDS,
}


class Topic(NamedTuple):
    """A parsed topic: ``root`` is :data:`ROOT` or :data:`STREAM_ROOT`."""

    root: str
    device_id: str
    leaf: str


def valid_device_id(device_id: object) -> bool:
    """Whether ``device_id`` is a string matching :data:`DEVICE_ID_PATTERN` in full."""
    return isinstance(device_id, str) and _DEVICE_ID.fullmatch(device_id) is not None


def check_device_id(device_id: object) -> str:
    """``device_id`` itself if valid, else :class:`CodecError` naming it."""
    if not valid_device_id(device_id):
        raise CodecError(
            f"bad device id {device_id!r:.80}: must match {DEVICE_ID_PATTERN} "
            "(a letter or digit, then up to 63 letters, digits, '_', '.', '-')"
        )
    assert isinstance(device_id, str)
    return device_id


def uplink_topic(device_id: str, stream: str) -> str:
    """``fleet/v1/{device_id}/{stream}`` for a stream of :data:`STREAMS`."""
    return _topic(ROOT, device_id, stream, STREAMS)


def status_topic(device_id: str) -> str:
    """``fleet/v1/{device_id}/status`` (retained; also the last will's topic)."""
    return _topic(ROOT, device_id, STATUS, (STATUS,))


def downlink_topic(device_id: str, kind: str) -> str:
    """``fleet/v1/{device_id}/{kind}`` for ``ack``, ``manifest``, ``config`` or ``model``."""
    return _topic(ROOT, device_id, kind, DOWNLINK_KINDS)


def stream_topic(device_id: str, kind: str) -> str:
    """``fleetstream/v1/{device_id}/{kind}`` for ``position``, ``event`` or ``pod``."""
    return _topic(STREAM_ROOT, device_id, kind, STREAM_KINDS)


def parse_topic(topic: str) -> Topic:
    """Split a contract topic into (root, device_id, leaf); :class:`CodecError` otherwise.

    Exactly four levels, a known root, a valid device id and a leaf that root knows:
    ``parse_topic("fleet/v1/van-7/events") == Topic("fleet/v1", "van-7", "events")``.
    Wildcards, empty levels, ``$share/...`` forms and trailing slashes are all rejected.
    """
    if not isinstance(topic, str):
        raise CodecError(f"topic must be a string, not {type(topic).__name__}")
    if len(topic) > _MAX_TOPIC_CHARS:
        raise CodecError(f"topic too long ({len(topic)} characters): {topic[:40]!r}...")
    parts = topic.split("/")
    if len(parts) != 4:
        raise CodecError(f"topic {topic!r} is not ROOT/v1/DEVICE_ID/LEAF (4 levels)")
    root = f"{parts[0]}/{parts[1]}"
    leaves = _LEAVES.get(root)
    if leaves is None:
        raise CodecError(f"topic {topic!r}: unknown root {root!r} (want {ROOT} or {STREAM_ROOT})")
    device_id, leaf = parts[2], parts[3]
    check_device_id(device_id)
    if leaf not in leaves:
        raise CodecError(f"topic {topic!r}: unknown leaf {leaf!r} under {root} (want {leaves})")
    return Topic(root, device_id, leaf)


def shared_subscriptions(group: str = "ingest") -> list[str]:
    """Ingest's shared subscriptions: ``$share/{group}/fleet/v1/+/{leaf}`` for every
    uplink stream and ``status``. N workers in one group split the messages."""
    if not group or any(c in group for c in "/+#") or not group.isprintable():
        raise CodecError(f"bad shared subscription group {group!r}")
    return [f"$share/{group}/{ROOT}/+/{leaf}" for leaf in UPLINK_LEAVES]


def _topic(root: str, device_id: str, leaf: str, allowed: tuple[str, ...]) -> str:
    check_device_id(device_id)
    if leaf not in allowed:
        raise CodecError(f"unknown topic leaf {leaf!r} (want one of {allowed})")
    return f"{root}/{device_id}/{leaf}"
