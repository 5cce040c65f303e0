"""Issuing PODs as a hash chain, and keeping the chain's place across restarts."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.jws import JwsError, read_header, verify_compact
from firmware_agent.contract.keys import key_thumbprint
from firmware_agent.contract.pod import GENESIS_PREV, pod_digest
from firmware_agent.errors import AgentError
from firmware_agent.pod.chain import ChainState, Pod, PodChain
from firmware_agent.pod.state import ChainStateError, ChainStateStore, recover_state
from firmware_agent.pod.verify import verify_chain
from tests.pods import fields


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_first_pod_starts_the_chain(key: Ed25519PrivateKey) -> None:
    chain = PodChain("van-0007", key)
    assert chain.state == ChainState(0, GENESIS_PREV)
    pod = chain.issue(fields(1))
    assert isinstance(pod, Pod)
    assert pod.seq == 1
    assert pod.claims == fields(1) | {"v": 1, "device_id": "van-0007", "seq": 1, "prev": "0" * 64}
    assert verify_compact(pod.token, key.public_key(), typ="pod+jwt") == pod.claims
    assert (
        pod.digest == hashlib.sha256(pod.token.encode("ascii")).hexdigest() == pod_digest(pod.token)
    )
    assert chain.state == ChainState(seq=1, prev=pod.digest)
    assert read_header(pod.token) == {
        "alg": "EdDSA",
        "kid": key_thumbprint(key.public_key()),
        "typ": "pod+jwt",
    }
    assert chain.kid == key_thumbprint(key.public_key())
    assert chain.device_id == "van-0007"


def test_each_pod_links_to_the_previous_one(key: Ed25519PrivateKey) -> None:
    chain = PodChain("van-0007", key)
    pods = [chain.issue(fields(n)) for n in range(1, 6)]
    assert [p.seq for p in pods] == [1, 2, 3, 4, 5]
    for before, after in itertools.pairwise(pods):
        assert after.claims["prev"] == before.digest
    assert chain.state == ChainState(5, pods[-1].digest)


def test_continuing_from_a_saved_state(key: Ed25519PrivateKey) -> None:
    first = PodChain("van-0007", key)
    early = [first.issue(fields(n)) for n in range(1, 4)]
    second = PodChain("van-0007", key, first.state)
    late = [second.issue(fields(n)) for n in range(4, 6)]
    report = verify_chain([p.token for p in early + late], key.public_key(), start=ChainState())
    assert report.valid
    assert report.last_seq == 5


@pytest.mark.parametrize("reserved", ["v", "device_id", "seq", "prev"])
def test_fields_must_not_set_what_the_chain_sets(key: Ed25519PrivateKey, reserved: str) -> None:
    chain = PodChain("van-0007", key)
    with pytest.raises(ValueError, match=reserved):
        chain.issue(fields(1) | {reserved: 99})
    assert chain.state == ChainState()


def test_a_failed_issue_does_not_advance_the_chain(key: Ed25519PrivateKey) -> None:
    chain = PodChain("van-0007", key)
    chain.issue(fields(1))
    before = chain.state
    with pytest.raises(JwsError):
        chain.issue({"parcel": object()})
    with pytest.raises(ValueError):  # noqa: PT011 (JwsError is a ValueError, on purpose)
        chain.issue({"lat": float("nan")})
    assert chain.state == before
    assert chain.issue(fields(2)).claims["prev"] == before.prev


def test_claims_are_what_a_verifier_reads(key: Ed25519PrivateKey) -> None:
    pod = PodChain("van-0007", key).issue({"where": (48.1, 11.5), "note": "Straße"})
    assert pod.claims["where"] == [48.1, 11.5]
    assert pod.claims["note"] == "Straße"


def test_pure_and_deterministic(key: Ed25519PrivateKey) -> None:
    a = PodChain("van-0007", key)
    b = PodChain("van-0007", key)
    assert [a.issue(fields(n)).token for n in range(3)] == [
        b.issue(fields(n)).token for n in range(3)
    ]


def test_chain_repr_has_no_key(key: Ed25519PrivateKey) -> None:
    text = repr(PodChain("van-0007", key))
    assert text.startswith("PodChain(device_id='van-0007', kid=")
    assert "Ed25519PrivateKey" not in text


@pytest.mark.parametrize(
    ("seq", "prev"),
    [(-1, GENESIS_PREV), (True, GENESIS_PREV), (1, "0" * 63), (1, "A" * 64), (0, "1" * 64)],
)
def test_chain_state_is_validated(seq: Any, prev: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        ChainState(seq, prev)


def test_device_id_is_required(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="device_id"):
        PodChain("", key)


# --- ChainStateStore -----------------------------------------------------------------


def test_absent_state_is_a_new_chain(tmp_path: Path) -> None:
    assert ChainStateStore(tmp_path / "pod-chain.json").load() == ChainState()


def test_save_and_load(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = ChainStateStore(tmp_path / "state" / "pod-chain.json")
    chain = PodChain("van-0007", key)
    for n in range(3):
        chain.issue(fields(n))
        store.save(chain.state)
    assert store.load() == chain.state
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert os.listdir(store.path.parent) == ["pod-chain.json"]
    assert json.loads(store.path.read_text()) == {"v": 1, "seq": 3, "prev": chain.state.prev}
    # A restarted agent continues the same chain.
    resumed = PodChain("van-0007", key, store.load())
    assert resumed.issue(fields(4)).seq == 4


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        b"{",
        b"[]",
        b"\xff\xfe",
        b'{"seq": 3, "prev": "' + b"a" * 64 + b'"}',  # no version
        b'{"v": 2, "seq": 3, "prev": "' + b"a" * 64 + b'"}',
        b'{"v": 1, "seq": "3", "prev": "' + b"a" * 64 + b'"}',
        b'{"v": 1, "seq": -1, "prev": "' + b"a" * 64 + b'"}',
        b'{"v": 1, "seq": 3, "prev": "abc"}',
        b'{"v": 1, "seq": 3}',
    ],
)
def test_damaged_state_is_an_error_never_a_new_chain(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pod-chain.json"
    path.write_bytes(content)
    with pytest.raises(ChainStateError, match="would fork it") as info:
        ChainStateStore(path).load()
    assert isinstance(info.value, AgentError)
    assert isinstance(info.value, ValueError)


def test_recover_state_from_a_journal(key: Ed25519PrivateKey) -> None:
    chain = PodChain("van-0007", key)
    pods = [chain.issue(fields(n)) for n in range(1, 6)]
    journal = [pods[0].token, "garbage", pods[2].token, pods[4].token, pods[3].token, ""]
    assert recover_state(journal) == chain.state
    assert recover_state([]) == ChainState()
    assert recover_state(["x.y.z"]) == ChainState()
    # With the key, a forged record with a higher seq is not believed.
    forger = PodChain("van-0007", Ed25519PrivateKey.generate(), chain.state)
    forged = forger.issue(fields(6))
    assert recover_state([*journal, forged.token]).seq == 6
    assert recover_state([*journal, forged.token], key=key.public_key()) == chain.state
