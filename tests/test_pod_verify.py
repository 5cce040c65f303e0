"""Verifying a chain of PODs: every kind of tampering is found and named at its record."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.contract.jws import b64url_decode, b64url_encode
from firmware_agent.pod.chain import ChainState, Pod, PodChain
from firmware_agent.pod.verify import (
    ChainReport,
    read_pod_file,
    read_pod_records,
    verify_chain,
)
from tests.pods import fields

DEVICE = "van-0007"
N = 12


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def public(key: Ed25519PrivateKey) -> Ed25519PublicKey:
    return key.public_key()


@pytest.fixture(scope="module")
def pods(key: Ed25519PrivateKey) -> list[Pod]:
    chain = PodChain(DEVICE, key)
    return [chain.issue(fields(n)) for n in range(1, N + 1)]


@pytest.fixture
def tokens(pods: list[Pod]) -> list[str]:
    """A fresh list per test: tests tamper with it."""
    return [p.token for p in pods]


def found(report: ChainReport) -> list[tuple[int, int | None, str]]:
    return [(p.index, p.seq, p.kind) for p in report.problems]


def state_after(pods: list[Pod], seq: int) -> ChainState:
    return ChainState(seq, pods[seq - 1].digest) if seq else ChainState()


def with_payload(token: str, change: Any) -> str:
    """``token`` with its payload changed and the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    changed = change(claims)
    body = json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()
    return f"{header}.{b64url_encode(body)}.{signature}"


def test_a_valid_chain(public: Ed25519PublicKey, tokens: list[str]) -> None:
    report = verify_chain(tokens, public, device_id=DEVICE, start=ChainState())
    assert report.valid
    assert (report.records, report.ok, report.first_seq, report.last_seq) == (N, N, 1, N)


def test_a_thousand_pods_verify(key: Ed25519PrivateKey) -> None:
    chain = PodChain(DEVICE, key)
    tokens = [chain.issue(fields(n)).token for n in range(1, 1001)]
    report = verify_chain(tokens, key.public_key(), start=ChainState())
    assert report.valid
    assert (report.records, report.ok, report.last_seq) == (1000, 1000, 1000)


def test_empty_input_is_valid_and_says_so(public: Ed25519PublicKey) -> None:
    report = verify_chain([], public)
    assert report.valid
    assert (report.records, report.first_seq, report.last_seq) == (0, None, None)


# --- one fault at a time: the first problem has the right record and kind ---------------


def test_forged_with_another_key(
    pods: list[Pod], tokens: list[str], public: Ed25519PublicKey
) -> None:
    # The forger knows the chain (digests are public) but not the key.
    forger = PodChain(DEVICE, Ed25519PrivateKey.generate(), state_after(pods, 4))
    tokens[4] = forger.issue(fields(5) | {"verdict": "inside", "parcel": "STOLEN"}).token
    report = verify_chain(tokens, public, start=ChainState())
    assert found(report) == [(5, 5, "bad_signature")]
    assert "another key" in report.problems[0].detail
    assert report.ok == N - 1


def test_forged_record_inserted(
    pods: list[Pod], tokens: list[str], public: Ed25519PublicKey
) -> None:
    forger = PodChain(DEVICE, Ed25519PrivateKey.generate(), state_after(pods, 5))
    tokens.insert(5, forger.issue(fields(99)).token)
    assert found(verify_chain(tokens, public)) == [(6, 6, "bad_signature")]


def test_altered_payload(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens[4] = with_payload(tokens[4], lambda c: c | {"verdict": "inside", "lat": 48.2})
    report = verify_chain(tokens, public)
    assert found(report) == [(5, 5, "bad_signature")]
    assert "altered" in report.problems[0].detail


def test_one_payload_byte_changed(tokens: list[str], public: Ed25519PublicKey) -> None:
    header, payload, signature = tokens[6].split(".")
    raw = bytearray(b64url_decode(payload))
    raw[raw.index(b"S007")] = ord("X")
    tokens[6] = f"{header}.{b64url_encode(bytes(raw))}.{signature}"
    assert found(verify_chain(tokens, public)) == [(7, 7, "bad_signature")]


def test_altered_and_re_signed_by_an_attacker(
    pods: list[Pod], tokens: list[str], public: Ed25519PublicKey
) -> None:
    # Payload changed, re-signed with the attacker's key, and the next record's prev
    # rewritten to the new digest (re-signed as well): both are bad signatures, and
    # nothing after them is blamed.
    attacker = Ed25519PrivateKey.generate()
    altered = PodChain(DEVICE, attacker, state_after(pods, 3))
    fake4 = altered.issue(fields(4) | {"parcel": "STOLEN"})
    fake5 = altered.issue(fields(5))
    tokens[3], tokens[4] = fake4.token, fake5.token
    report = verify_chain(tokens, public)
    assert found(report) == [(4, 4, "bad_signature"), (5, 5, "bad_signature")]


def test_prev_rewritten(tokens: list[str], pods: list[Pod], public: Ed25519PublicKey) -> None:
    tokens[5] = with_payload(tokens[5], lambda c: c | {"prev": pods[3].digest})
    assert found(verify_chain(tokens, public)) == [(6, 6, "bad_signature")]


def test_deletion_hidden_by_rewriting_prev(
    tokens: list[str], pods: list[Pod], public: Ed25519PublicKey
) -> None:
    # Delete seq 5 and point seq 6 at seq 4: the signature gives it away, and seq 5 is
    # still counted missing at the next record.
    tokens[5] = with_payload(tokens[5], lambda c: c | {"prev": pods[3].digest})
    del tokens[4]
    assert found(verify_chain(tokens, public)) == [(5, 6, "bad_signature"), (6, 7, "missing")]


def test_swapped_pair(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens[4], tokens[5] = tokens[5], tokens[4]
    report = verify_chain(tokens, public, start=ChainState())
    assert found(report) == [(5, 6, "reordered")]
    assert report.problems[0].detail == "seq 6 arrives before seq 5 (record 6)"


def test_swapped_first_pair(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens[0], tokens[1] = tokens[1], tokens[0]
    assert found(verify_chain(tokens, public)) == [(1, 2, "reordered")]
    assert found(verify_chain(tokens, public, start=ChainState())) == [(1, 2, "reordered")]


def test_record_moved_earlier(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens.insert(1, tokens.pop(7))  # seq 8 now second
    assert found(verify_chain(tokens, public)) == [(2, 8, "reordered")]


def test_record_moved_later(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens.insert(6, tokens.pop(3))  # seq 4 now after seq 7
    report = verify_chain(tokens, public)
    # Each record that arrives while seq 4 is still to come is out of place.
    assert found(report) == [(4, 5, "reordered"), (5, 6, "reordered"), (6, 7, "reordered")]
    assert report.problems[0].detail == "seq 5 arrives before seq 4 (record 7)"


def test_deleted_record(tokens: list[str], public: Ed25519PublicKey) -> None:
    del tokens[4]
    report = verify_chain(tokens, public, start=ChainState())
    assert found(report) == [(5, 6, "missing")]
    assert report.problems[0].detail.startswith("seq 5 absent before this record: 1 record(s)")


def test_deleted_run(tokens: list[str], public: Ed25519PublicKey) -> None:
    del tokens[3:6]
    report = verify_chain(tokens, public)
    assert found(report) == [(4, 7, "missing")]
    assert "seqs 4..6" in report.problems[0].detail
    assert "3 record(s) deleted" in report.problems[0].detail


def test_deleting_the_last_record_is_not_visible_in_the_chain(
    tokens: list[str], public: Ed25519PublicKey
) -> None:
    # Nothing follows it to carry its digest. The outbox's cumulative acks cover this:
    # ingest knows the highest seq it stored, and last_seq falls short of it.
    del tokens[-1]
    report = verify_chain(tokens, public, start=ChainState())
    assert report.valid
    assert report.last_seq == N - 1


def test_deleting_the_first_record_needs_a_known_start(
    tokens: list[str], public: Ed25519PublicKey
) -> None:
    del tokens[0]
    assert verify_chain(tokens, public).valid  # an excerpt verifies on its own
    assert found(verify_chain(tokens, public, start=ChainState())) == [(1, 2, "missing")]


def test_excerpt_from_a_known_state(
    tokens: list[str], pods: list[Pod], public: Ed25519PublicKey
) -> None:
    assert verify_chain(tokens[5:], public, start=state_after(pods, 5)).valid
    wrong = ChainState(5, pods[3].digest)
    assert found(verify_chain(tokens[5:], public, start=wrong)) == [(1, 6, "broken_link")]
    assert found(verify_chain(tokens[5:], public, start=state_after(pods, 7))) == [
        (1, 6, "reordered"),
        (2, 7, "reordered"),
    ]


def test_duplicated_record(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens.insert(5, tokens[4])
    report = verify_chain(tokens, public)
    assert found(report) == [(6, 5, "duplicate")]
    assert report.problems[0].detail == "same POD as record 5"
    tokens.append(tokens[0])
    assert found(verify_chain(tokens, public)) == [(6, 5, "duplicate"), (N + 2, 1, "duplicate")]


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t[: len(t) // 2],  # truncated (a write cut short)
        lambda t: t[:-5],  # signature cut
        lambda t: "garbage",
        lambda t: "",
        lambda t: '{"type":"pod","jws":',
    ],
)
def test_truncated_or_garbage_record(
    tokens: list[str], public: Ed25519PublicKey, damage: Any
) -> None:
    tokens[4] = damage(tokens[4])
    report = verify_chain(tokens, public)
    assert [(p.index, p.kind) for p in report.problems] == [(5, "malformed")]


def test_garbage_line_inserted(tokens: list[str], public: Ed25519PublicKey) -> None:
    tokens.insert(3, "not a pod")
    assert found(verify_chain(tokens, public)) == [(4, None, "malformed")]


def test_wrong_device(key: Ed25519PrivateKey, tokens: list[str], public: Ed25519PublicKey) -> None:
    # The same key used under another device id (a cloned SD card, a misconfiguration).
    other = PodChain("van-0008", key).issue(fields(1))
    tokens.insert(3, other.token)
    report = verify_chain(tokens, public)
    assert found(report) == [(4, 1, "wrong_device")]
    assert "'van-0008'" in report.problems[0].detail
    everything = verify_chain(tokens, public, device_id="van-0009")
    assert {p.kind for p in everything.problems} == {"wrong_device"}
    assert len(everything.problems) == N + 1


def test_wrong_prev_from_the_device_is_a_broken_link(
    key: Ed25519PrivateKey, pods: list[Pod], tokens: list[str], public: Ed25519PublicKey
) -> None:
    # Validly signed with the right seq, linked to the wrong record: only the device
    # could have made it, e.g. after restoring a chain state from another device's
    # backup.
    bad = PodChain(DEVICE, key, ChainState(4, pods[1].digest)).issue(fields(5))
    tokens[4] = bad.token
    report = verify_chain(tokens, public)
    assert found(report)[0] == (5, 5, "broken_link")
    assert "prev does not match the digest of seq 4 (record 4)" in report.problems[0].detail
    # seq 6 was linked to the original seq 5, which is gone.
    assert found(report) == [(5, 5, "broken_link"), (6, 6, "broken_link")]


def test_forked_chain(key: Ed25519PrivateKey, pods: list[Pod], public: Ed25519PublicKey) -> None:
    # The device's state was rolled back to seq 4 after issuing seq 6: it issues
    # seq 5, 6, 7 again with other content.
    fork = PodChain(DEVICE, key, state_after(pods, 4))
    tokens = [p.token for p in pods[:6]] + [fork.issue(fields(100 + n)).token for n in (5, 6, 7)]
    report = verify_chain(tokens, public)
    assert found(report) == [(7, 5, "broken_link"), (8, 6, "broken_link"), (9, 7, "broken_link")]
    assert "chain forked" in report.problems[0].detail


def test_unsigned_and_non_pod_records(
    key: Ed25519PrivateKey, tokens: list[str], public: Ed25519PublicKey
) -> None:
    payload = tokens[2].split(".")[1]
    none_header = b64url_encode(b'{"alg":"none","typ":"pod+jwt"}')
    tokens[2] = f"{none_header}.{payload}.{b64url_encode(b'x' * 64)}"
    from firmware_agent.contract.jws import sign_compact  # noqa: PLC0415

    tokens[7] = sign_compact({"hello": "world"}, key, kid="k")
    report = verify_chain(tokens, public)
    assert found(report) == [(3, 3, "bad_signature"), (8, None, "malformed")]
    assert "'none'" in report.problems[0].detail
    assert "not a POD" in report.problems[1].detail


def test_every_problem_is_reported(
    pods: list[Pod], tokens: list[str], public: Ed25519PublicKey
) -> None:
    forger = PodChain(DEVICE, Ed25519PrivateKey.generate(), state_after(pods, 1))
    damaged = [
        tokens[0],
        forger.issue(fields(2)).token,  # 2: forged
        tokens[2],
        tokens[4],  # 4: seq 5 before seq 4
        tokens[3],
        tokens[5],
        "x" * 40,  # 7: garbage
        tokens[7],
        # seq 9 deleted
        tokens[9],  # 9: seq 10, missing 9
        tokens[9],  # 10: duplicate
        tokens[10],
        tokens[11],
    ]
    report = verify_chain(damaged, public, start=ChainState())
    assert found(report) == [
        (2, 2, "bad_signature"),
        (4, 5, "reordered"),
        (7, None, "malformed"),
        (9, 10, "missing"),
        (10, 10, "duplicate"),
    ]
    assert report.ok == len(damaged) - 5
    assert not report.valid
    assert (report.first_seq, report.last_seq) == (1, 12)


# --- reading files ----------------------------------------------------------------------


def test_read_one_token_per_line(tokens: list[str]) -> None:
    text = "# exported PODs\n\n" + "\n".join(tokens[:3]) + "\r\n" + tokens[3] + "\n"
    assert list(read_pod_file(text)) == tokens[:4]
    assert [line for line, _ in read_pod_records(text)] == [3, 4, 5, 6]


def test_read_replay_output(tokens: list[str], public: Ed25519PublicKey) -> None:
    lines = [
        {"type": "status", "time": "2026-11-21T08:00:00Z", "online": True},
        {"type": "telemetry", "time": "2026-11-21T08:00:01Z", "fixes": []},
        {"type": "pod", "time": "2026-11-21T09:14:03.250Z", "jws": tokens[0]},
        {"type": "event", "kind": "arrival", "stop_id": "S002"},
        {"type": "pod", "time": "2026-11-21T09:20:00.000Z", "jws": tokens[1]},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    text += '{"type": "pod", "time": "2026-11-21T09:30:00Z"}\n'  # a POD without its token
    text += '{"type": "pod", "jws": "' + tokens[2][:40] + "\n"  # cut short by a crash
    text += "[1, 2]\n"
    assert [line for line, _ in read_pod_records(text)] == [3, 5, 6, 7, 8]
    report = verify_chain(read_pod_file(text), public)
    assert found(report) == [(3, None, "malformed"), (4, None, "malformed"), (5, None, "malformed")]
    assert (report.records, report.ok) == (5, 2)


def test_deleted_record_and_a_record_moved_early(
    tokens: list[str], public: Ed25519PublicKey
) -> None:
    # 1, 2, 5, 3 (4 deleted, 5 moved before 3): both faults are reported.
    report = verify_chain([tokens[0], tokens[1], tokens[4], tokens[2]], public)
    assert found(report) == [(3, 5, "reordered"), (3, 5, "missing")]
    assert report.problems[1].detail.startswith("seq 4 absent")
    # 1, 2, 5, 3, 7 (4 and 6 deleted): 5 is not counted missing, it is misplaced.
    report = verify_chain([tokens[0], tokens[1], tokens[4], tokens[2], tokens[6]], public)
    assert found(report) == [(3, 5, "reordered"), (5, 7, "missing")]
    assert report.problems[1].detail.startswith("seqs 4, 6 absent before this record: 2 record")


# --- the property behind it all -------------------------------------------------------

_KEY = Ed25519PrivateKey.generate()
_CHAIN = PodChain(DEVICE, _KEY)
_TOKENS = [_CHAIN.issue(fields(n)).token for n in range(1, 9)]


@given(st.lists(st.integers(min_value=-1, max_value=len(_TOKENS) - 1), max_size=12))
def test_valid_exactly_when_a_contiguous_run_of_the_chain(picks: list[int]) -> None:
    """Any selection, order and repetition of records (-1: garbage) is valid if and only
    if it is an unbroken run of the chain; from genesis, if and only if a prefix, and
    otherwise the first problem is where the records first depart from the chain."""
    tokens = [_TOKENS[i] if i >= 0 else "garbage" for i in picks]
    run = not picks or (picks[0] >= 0 and picks == list(range(picks[0], picks[0] + len(picks))))
    report = verify_chain(tokens, _KEY.public_key())
    assert report.valid == run
    assert report.records == len(picks)
    assert 0 <= report.ok <= report.records
    assert all(1 <= p.index <= len(picks) for p in report.problems)
    from_genesis = verify_chain(tokens, _KEY.public_key(), start=ChainState())
    assert from_genesis.valid == (picks == list(range(len(picks))))
    if not from_genesis.valid:
        # The first problem is at the first record that departs from the true chain.
        departs = next(i for i, pick in enumerate(picks) if pick != i) + 1
        assert from_genesis.problems[0].index == departs


def test_a_huge_seq_jump_is_reported_quickly(key: Ed25519PrivateKey, tokens: list[str]) -> None:
    # Only the device could sign it (a bug, a corrupted state): it must not hang ingest.
    far = PodChain(DEVICE, key, ChainState(10**15, "a" * 64)).issue(fields(1)).token
    report = verify_chain([*tokens, far, tokens[0]], key.public_key())
    assert found(report) == [(N + 1, 10**15 + 1, "missing"), (N + 2, 1, "duplicate")]
    assert f"seqs {N + 1}..{10**15}" in report.problems[0].detail
    report = verify_chain([far, *tokens], key.public_key())
    assert found(report)[0] == (1, 10**15 + 1, "reordered")
