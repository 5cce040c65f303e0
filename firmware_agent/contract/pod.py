"""Proof of delivery as both sides read it: the hash chain's rules.

Every POD carries ``seq`` (1, 2, 3, ... per device) and ``prev``, the hex SHA-256 of the
previous POD's compact serialization (:data:`GENESIS_PREV`, 64 zeros, for the first).
Both are inside the signed payload (:mod:`.jws`), so nobody without the device key can
delete, reorder or replace a POD without a verifier noticing at the next one.
docs/pod.md describes the claims and how backends verify them: :class:`PodClaims` is
their one typed form, built by the van from :class:`PodFields` and checked by ingest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.outcomes import DELIVERED, Outcome
from firmware_agent.contract.records import (
    PodRecord,
    ScanSource,
    Verdict,
    decode_fields,
    encode_fields,
    wire,
)
from firmware_agent.contract.topics import MAX_SEQ

GENESIS_PREV = "0" * 64
POD_VERSION = 1
# What the chain writes into every POD; the caller's fields must not set them.
RESERVED_CLAIMS = frozenset({"v", "device_id", "seq", "prev"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_hex_digest(text: object) -> bool:
    """Whether ``text`` is a lowercase hex SHA-256 (the form of ``prev``)."""
    return isinstance(text, str) and _HEX_DIGEST.fullmatch(text) is not None


def pod_digest(token: str) -> str:
    """Lowercase hex SHA-256 of the compact serialization as ASCII: the next ``prev``.

    :class:`UnicodeEncodeError` (a :class:`ValueError`) if ``token`` is not ASCII, which
    no compact JWS is.
    """
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class PodFields:
    """What the van says about a delivery; the chain adds ``v``, ``device_id``, ``seq``
    and ``prev`` (:class:`PodClaims`). docs/pod.md describes each claim.

    ``time``, ``lat``, ``lon`` and ``hacc_m`` are the fix the POD was placed with (None
    without a fresh one: ``verdict`` is then ``no_fix``); ``distance_m`` is the
    distance to the stop's fence (0 inside, None without a fix). ``outcome`` is the
    attempt's (:mod:`.outcomes`); claims without one (signed before outcomes existed)
    read as ``delivered``.
    """

    parcel: str
    raw: str
    stop_id: str | None
    route_id: str
    time: datetime | None
    scan_time: datetime
    lat: float | None = field(metadata=wire(ndigits=7))
    lon: float | None = field(metadata=wire(ndigits=7))
    hacc_m: float | None = field(metadata=wire(ndigits=1))
    verdict: Verdict
    distance_m: float | None = field(metadata=wire(ndigits=1))
    source: ScanSource
    outcome: Outcome = field(default=DELIVERED, metadata=wire(absent=DELIVERED))


@dataclass(frozen=True, slots=True, kw_only=True)
class PodClaims(PodFields):
    """The claims of one signed POD: the one typed value the van signs, ingest checks
    and the API serves. :meth:`to_json` is what is signed (every claim present, unknown
    values null); :meth:`from_json` is the one check of a payload (claims it does not
    know are ignored, as RFC 7519 asks)."""

    v: int = POD_VERSION
    device_id: str
    seq: int
    prev: str

    def to_json(self) -> dict[str, Any]:
        return encode_fields(self, "POD claims")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PodClaims:
        """The claims of a verified payload; :class:`CodecError` naming every claim that
        is missing or of the wrong kind ("signed, but not a POD")."""
        known = {k: v for k, v in obj.items() if k in _CLAIM_NAMES}
        faults = []
        if known.get("v") != POD_VERSION:
            faults.append(f"v is {known.get('v')!r:.20}, not {POD_VERSION}")
        seq = known.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
            faults.append("seq is not an integer in 1..2**63-1")
        if not is_hex_digest(known.get("prev")):
            faults.append("prev is not 64 lowercase hex digits")
        if faults:
            raise CodecError("; ".join(faults))
        return cls(**decode_fields(cls, known, "claims"))

    @classmethod
    def of(cls, fields: PodFields, *, device_id: str, seq: int, prev: str) -> PodClaims:
        """``fields`` as the POD ``seq`` of ``device_id``, linked to ``prev``."""
        values = {f.name: getattr(fields, f.name) for f in dataclasses.fields(PodFields)}
        return cls(**values, device_id=device_id, seq=seq, prev=prev)

    def record(self, token: str) -> PodRecord:
        """The ``pod`` stream's record of these claims, signed as ``token``."""
        if self.stop_id is None:
            raise CodecError("a POD record names its stop: stop_id is null")
        return PodRecord(
            time=self.scan_time,
            stop_id=self.stop_id,
            parcel=self.parcel,
            seq=self.seq,
            verdict=self.verdict,
            distance_m=self.distance_m,
            jws=token,
            outcome=self.outcome,
        )


_CLAIM_NAMES = frozenset(f.name for f in dataclasses.fields(PodClaims))
