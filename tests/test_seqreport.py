"""The contract's proofs behind acks (issue 13, findings 6 and 7): the van's signed
sequence report in its status, and the signed telemetry batch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.envelope import decode_status, encode_status
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.jws import JwsError, sign_compact
from firmware_agent.contract.records import TelemetryPoint
from firmware_agent.contract.schema import validate
from firmware_agent.contract.seqreport import SEQS_TYP, SeqReport, sign_report, verify_report
from firmware_agent.contract.telemetry import (
    FLAG_SIGNED,
    SIGNATURE_BYTES,
    decode_batch,
    encode_batch,
    frame_batch,
    verify_batch,
)
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, Stream

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
T = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
ZERO = {"telemetry": 0, "events": 0, "pod": 0}


def report(**acked: int) -> SeqReport:
    streams: dict[Stream, int] = {s: acked.get(s, 0) for s in STREAMS}
    return SeqReport(
        device_id="van-7", time=T, acked=streams, last={s: n + 2 for s, n in streams.items()}
    )


def test_a_report_round_trips_through_a_status() -> None:
    token = sign_report(report(events=40, pod=7), KEY)
    payload = encode_status("van-7", "online", time=T, health={"x": 1}, seqs=token)
    status = decode_status(payload)
    validate("status", status.to_json())
    assert status.seqs == token
    got = verify_report(token, KEY.public_key())
    assert got == report(events=40, pod=7)
    assert dict(got.last) == {"telemetry": 2, "events": 42, "pod": 9}


def test_a_report_verifies_only_with_the_device_key() -> None:
    token = sign_report(report(events=1), KEY)
    with pytest.raises(JwsError):
        verify_report(token, OTHER.public_key())
    head, claims, signature = token.split(".")
    # One character of the signature changed (the 11th: it carries 6 bits of the
    # signature, unlike the last one's padding bits).
    forged = signature[:10] + ("B" if signature[10] != "B" else "C") + signature[11:]
    with pytest.raises(JwsError):
        verify_report(f"{head}.{claims}.{forged}", KEY.public_key())


@pytest.mark.parametrize(
    "claims",
    [
        {"v": 1},
        {"v": 2, "device_id": "van-7", "time": "2026-11-21T09:00:00.000Z", "acked": ZERO,
         "last": ZERO},
        {"v": 1, "device_id": "van-7", "time": "yesterday", "acked": ZERO, "last": ZERO},
        {"v": 1, "device_id": "van-7", "time": "2026-11-21T09:00:00.000Z",
         "acked": {"events": 1}, "last": ZERO},
        {"v": 1, "device_id": "van-7", "time": "2026-11-21T09:00:00.000Z",
         "acked": {**ZERO, "pod": 3}, "last": ZERO},  # acked above last
        {"v": 1, "device_id": "van-7", "time": "2026-11-21T09:00:00.000Z",
         "acked": {**ZERO, "pod": MAX_SEQ + 1}, "last": {**ZERO, "pod": MAX_SEQ + 1}},
        {"v": 1, "device_id": "van 7", "time": "2026-11-21T09:00:00.000Z", "acked": ZERO,
         "last": ZERO},
    ],
)  # fmt: skip
def test_signed_claims_that_are_no_report_are_refused(claims: dict[str, object]) -> None:
    token = sign_compact(claims, KEY, kid="k", typ=SEQS_TYP)
    with pytest.raises(CodecError):
        verify_report(token, KEY.public_key())


def test_a_status_refuses_a_seqs_that_is_no_string() -> None:
    with pytest.raises(CodecError, match="seqs"):
        decode_status(b'{"v":1,"device_id":"van-7","state":"online","seqs":5}')
    with pytest.raises(CodecError, match="seqs"):
        decode_status(b'{"v":1,"device_id":"van-7","state":"online","seqs":"' + b"a" * 3000 + b'"}')


def _fixes() -> list[tuple[int, TelemetryPoint]]:
    return [
        (seq, TelemetryPoint(time=T, lat=48.0 + seq * 1e-5, lon=11.0, mode=3))
        for seq in (12, 13, 20)
    ]


def test_a_signed_batch_round_trips_and_verifies() -> None:
    payload = encode_batch("van-7", 10, _fixes(), historical=True, sign=KEY.sign)
    assert payload[3] & FLAG_SIGNED
    batch = decode_batch(payload)
    assert (batch.first_seq, batch.last_seq, batch.thinned, batch.historical) == (10, 20, 8, True)
    assert batch.signature == payload[-SIGNATURE_BYTES:]
    validate("telemetry-batch", batch.to_json())
    assert verify_batch(payload, KEY.public_key())
    assert not verify_batch(payload, OTHER.public_key())
    # Ed25519 is deterministic: framing what was decoded, with the key, gives the bytes.
    unsigned = encode_batch("van-7", 10, list(batch.points), historical=True)
    assert payload[:-SIGNATURE_BYTES] != unsigned  # the flag is signed too
    assert encode_batch("van-7", 10, list(batch.points), historical=True, sign=KEY.sign) == payload
    assert not verify_batch(unsigned, KEY.public_key())
    assert decode_batch(unsigned).signature is None


def test_a_signature_covers_every_byte_before_it() -> None:
    payload = encode_batch("van-7", 10, _fixes(), historical=False, sign=KEY.sign)
    for i in range(4, len(payload) - SIGNATURE_BYTES):
        altered = bytearray(payload)
        altered[i] ^= 0x01
        assert not verify_batch(bytes(altered), KEY.public_key()), i
    # The historical flag flipped (still a valid layout) is caught too.
    altered = bytearray(payload)
    altered[3] ^= 0x01
    assert decode_batch(bytes(altered)).historical
    assert not verify_batch(bytes(altered), KEY.public_key())


def test_a_signer_that_is_no_ed25519_signer_is_refused() -> None:
    with pytest.raises(CodecError, match="signature of 3 bytes"):
        frame_batch("van-7", 1, [], historical=False, last_seq=5, sign=lambda data: b"abc")
