"""The van's sequence report: what it has given up, signed, so that ingest can settle it.

A van deletes a record once ingest's cumulative ``ack`` covers it. If ingest then loses
what it had stored (its database dropped, or restored from a backup taken before), the
records acknowledged since are gone from both sides, and ingest's cumulative ack stays
below them for ever: every later record sits above a hole that nobody will fill, the
van's outbox never drains (issue 13, finding 6). The report closes such holes.

:class:`SeqReport`, per stream: ``acked``, the highest cumulative ack the van has
applied (it holds no record at or below it, and never sends one again), and ``last``,
the last seq it has handed out. The van signs it with its device key (the key of its
PODs) as a compact JWS of type :data:`SEQS_TYP` and sends it in its retained ``status``
(``seqs``): at every connect, and again whenever an ack comes back below what it has
applied (ingest is behind: a restored database). Ingest verifies it with the enrolled
key and settles every seq at or below ``acked`` that it does not have, recording those
ranges as lost (``released`` in ``GET /v1/devices/{id}/gaps``): the records were
acknowledged once, so the van deleted them, and the loss is ingest's, visible, not a
wedge.

Signed because settling seqs is what a forger would want: whoever can publish on the
van's topic could otherwise have ingest acknowledge records that are still on their
way, and the van would delete them undelivered. A report is a fact that stays true
(a van's ``acked`` never goes down), so a stale or replayed one settles only what the
van had given up anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.jws import sign_compact, verify_compact
from firmware_agent.contract.keys import key_thumbprint
from firmware_agent.contract.times import format_utc, parse_utc
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, Stream, check_device_id

SEQS_TYP: Final = "seqs+jwt"
VERSION: Final = 1
# A report is about 300 characters; the bound keeps a hostile status cheap to refuse.
MAX_REPORT_CHARS: Final = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqReport:
    """One device's sequence report: per stream, ``acked <= last``."""

    device_id: str
    time: datetime
    acked: Mapping[Stream, int]
    last: Mapping[Stream, int]

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise CodecError(f"seq report time must be UTC-aware, not {self.time!r}")
        for what, values in (("acked", self.acked), ("last", self.last)):
            if set(values) != set(STREAMS):
                raise CodecError(f"seq report {what}: want exactly {STREAMS}")
            for stream, seq in values.items():
                if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
                    raise CodecError(
                        f"seq report {what}.{stream}: {seq!r:.40} is not an integer 0..{MAX_SEQ}"
                    )
        for stream in STREAMS:
            if self.acked[stream] > self.last[stream]:
                raise CodecError(
                    f"seq report {stream}: acked {self.acked[stream]} > last {self.last[stream]}"
                )

    def claims(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "time": format_utc(self.time),
            "acked": {s: self.acked[s] for s in STREAMS},
            "last": {s: self.last[s] for s in STREAMS},
        }

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> SeqReport:
        """The report in verified ``claims``; :class:`CodecError` for anything else."""
        keys = {"v", "device_id", "time", "acked", "last"}
        if set(claims) != keys:
            raise CodecError(f"seq report: want exactly the claims {sorted(keys)}")
        if claims["v"] != VERSION or isinstance(claims["v"], bool):
            raise CodecError(f"seq report: version {claims['v']!r:.20}, want {VERSION}")
        acked, last, time = claims["acked"], claims["last"], claims["time"]
        if not isinstance(acked, dict) or not isinstance(last, dict) or not isinstance(time, str):
            raise CodecError("seq report: acked and last must be objects, time a string")
        when = parse_utc(time)
        if when is None:
            raise CodecError(f"seq report: time {time!r:.40} is not an ISO 8601 UTC time")
        return cls(
            device_id=check_device_id(claims["device_id"]),
            time=when,
            acked=acked,
            last=last,
        )


def sign_report(report: SeqReport, key: Ed25519PrivateKey) -> str:
    """``report`` as a compact JWS signed with the device key (``kid``: its thumbprint)."""
    return sign_compact(report.claims(), key, kid=key_thumbprint(key.public_key()), typ=SEQS_TYP)


def verify_report(token: str, key: Ed25519PublicKey) -> SeqReport:
    """The report ``token`` carries, verified with ``key``.

    :class:`~.jws.JwsError` when it does not verify (any reason), :class:`CodecError`
    when the signed claims are no report.
    """
    if not isinstance(token, str) or len(token) > MAX_REPORT_CHARS:
        raise CodecError(f"seq report: not a string of at most {MAX_REPORT_CHARS} characters")
    return SeqReport.from_claims(verify_compact(token, key, typ=SEQS_TYP))
