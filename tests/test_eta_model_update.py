"""New ETA models over the retained ``model`` topic: the signed payload (sign, verify,
every check, the ordering rule), the van's stored models and its rollback at start,
the settings, ``fleet-ingest model-key / sign-model / publish-model``, and a van on a
real Mosquitto that installs a signed model, refuses a forged and a replayed one,
restarts on the model it was sent and goes back to its shipped one on a clear.

Real .tflite files (exported with the training code's writer, and the shipped model),
real Ed25519 keys, a real broker, the installed console script."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_ingest.config import MqttSettings
from cloud_ingest.downlink import PublishError, publish_retained
from cloud_ingest.eta.tflite_export import Dense, export_mlp
from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract import schema
from firmware_agent.contract.envelope import decode_status
from firmware_agent.contract.errors import CodecError, ModelUpdateError
from firmware_agent.contract.eta_features import FEATURES_VERSION, N_FEATURES
from firmware_agent.contract.eta_model import OUTPUT_LOG_RATIO
from firmware_agent.contract.eventbatch import decode_event_message
from firmware_agent.contract.jws import b64url_decode, b64url_encode, canonical_json, sign_compact
from firmware_agent.contract.keys import key_thumbprint, load_public_key, public_key_pem
from firmware_agent.contract.model import (
    MAX_PAYLOAD_BYTES,
    MODEL_TYP,
    SignedModel,
    admit_model,
    read_unverified,
    sign_model,
    verify_model,
)
from firmware_agent.contract.model_file import read_metadata
from firmware_agent.contract.topics import downlink_topic
from firmware_agent.errors import ConfigError
from firmware_agent.eta.interpreter import available_backend
from firmware_agent.eta.model_store import (
    ModelStore,
    RunningModel,
    install_model,
    start_model,
)
from firmware_agent.eta.models import default_model_bytes
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.tracker import EtaConfig
from firmware_agent.run_cli import build_config, settings
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.van import VanConfig
from tests.broker import Mosquitto, free_port
from tests.idle_agent import health_after_load, idle_agent, run_args
from tests.nmea import line
from tests.vanday import T0, stop

DEVICE = "van-0042"
ISSUED = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
FLEET = Ed25519PrivateKey.generate()
NEXT_FLEET = Ed25519PrivateKey.generate()  # the key a rotation moves to
OTHER = Ed25519PrivateKey.generate()  # nobody the vans trust
INGEST = Path(sys.executable).parent / "fleet-ingest"
SHIPPED_VERSION = read_metadata(default_model_bytes())["model_version"]

needs_interpreter = pytest.mark.skipif(
    available_backend() is None, reason="no TFLite interpreter installed"
)


def tiny_model(bias: float, version: str, **metadata: str) -> bytes:
    """A real .tflite file: no weights, one bias, so its log-ratio output is ``bias``."""
    layer = Dense(weights=np.zeros((1, N_FEATURES), np.float32), bias=np.array([bias], np.float32))
    contract_metadata = {
        "features_version": FEATURES_VERSION,
        "model_version": version,
        "output": OUTPUT_LOG_RATIO,
    }
    return export_mlp([layer], batch=8, metadata={**contract_metadata, **metadata})


MODEL = tiny_model(0.5, "eta-test-1")
NEWER = tiny_model(-0.5, "eta-test-2")


def split(payload: bytes) -> tuple[str, bytes]:
    token, _, model = payload.partition(b"\n")
    return token.decode("ascii"), model


def claims_of(model: bytes, **changes: Any) -> dict[str, Any]:
    """The claims sign_model would sign for ``model``, with ``changes`` (``...`` drops)."""
    metadata = read_metadata(model)
    doc: dict[str, Any] = {
        "model_version": metadata["model_version"],
        "features_version": metadata["features_version"],
        "sha256": hashlib.sha256(model).hexdigest(),
        "size_bytes": len(model),
        "issued": "2026-11-21T06:00:00.000Z",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def signed_by_hand(
    claims: Mapping[str, Any],
    model: bytes,
    key: Ed25519PrivateKey = FLEET,
    *,
    typ: str = MODEL_TYP,
    kid: str | None = None,
) -> bytes:
    """A payload signed with any claims: what a buggy or hostile signer could make."""
    token = sign_compact(claims, key, kid=kid or key_thumbprint(key.public_key()), typ=typ)
    return token.encode("ascii") + b"\n" + model


def verify(payload: bytes, *keys: Ed25519PrivateKey, device_id: str = DEVICE) -> SignedModel:
    return verify_model(payload, [k.public_key() for k in keys or (FLEET,)], device_id=device_id)


def refused(payload: bytes, reason: str, *keys: Ed25519PrivateKey) -> ModelUpdateError:
    with pytest.raises(ModelUpdateError) as caught:
        verify(payload, *keys)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value


# -- signing and verifying -----------------------------------------------------------


def test_a_signed_model_verifies_and_says_what_it_is() -> None:
    payload = sign_model(MODEL, FLEET, issued=ISSUED)
    token, model = split(payload)
    assert model == MODEL  # raw after the newline: no base64 on the cellular link
    assert len(payload) - len(MODEL) < 1024
    signed = verify(payload)
    assert signed.model == MODEL
    assert signed.payload == payload
    assert signed.kid == key_thumbprint(FLEET.public_key())
    assert signed.claims.model_version == "eta-test-1"
    assert signed.claims.features_version == FEATURES_VERSION
    assert signed.claims.sha256 == hashlib.sha256(MODEL).hexdigest()
    assert signed.claims.size_bytes == len(MODEL)
    assert signed.issued == ISSUED
    assert signed.claims.devices is None
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": "EdDSA", "kid": signed.kid, "typ": "fleet-eta-model"}
    # The signed claims are the model message's decoded form in the contract.
    schema.validate("model", json.loads(b64url_decode(token.split(".")[1])))
    assert read_unverified(payload) == (signed.claims, signed.kid)


def test_the_shipped_model_can_be_sent_as_it_is() -> None:
    shipped = default_model_bytes()
    signed = verify(sign_model(shipped, FLEET, issued=ISSUED, devices=[DEVICE, "van-7"]))
    assert signed.model_version == SHIPPED_VERSION
    assert signed.claims.devices == ("van-0042", "van-7")


def test_a_model_signed_by_another_key_is_refused() -> None:
    forged = sign_model(MODEL, OTHER, issued=ISSUED)
    err = refused(forged, "unknown_key")
    assert key_thumbprint(OTHER.public_key()) in str(err)
    # The same, claiming to be the fleet's key: the signature gives it away.
    impostor = signed_by_hand(
        claims_of(MODEL), MODEL, OTHER, kid=key_thumbprint(FLEET.public_key())
    )
    refused(impostor, "bad_signature")


def test_every_key_of_a_rotation_is_trusted_and_only_those() -> None:
    old = sign_model(MODEL, FLEET, issued=ISSUED)
    new = sign_model(NEWER, NEXT_FLEET, issued=ISSUED + timedelta(days=1))
    assert verify(old, FLEET, NEXT_FLEET).model_version == "eta-test-1"
    assert verify(new, FLEET, NEXT_FLEET).model_version == "eta-test-2"
    assert verify(new, NEXT_FLEET).kid == key_thumbprint(NEXT_FLEET.public_key())
    refused(new, "unknown_key", FLEET)
    refused(sign_model(MODEL, OTHER, issued=ISSUED), "unknown_key", FLEET, NEXT_FLEET)


def test_without_a_key_every_model_is_refused() -> None:
    payload = sign_model(MODEL, FLEET, issued=ISSUED)
    with pytest.raises(ModelUpdateError, match="no fleet model key configured") as caught:
        verify_model(payload, [], device_id=DEVICE)
    assert caught.value.reason == "no_key"
    assert isinstance(caught.value, CodecError)  # the uplink counts a refused downlink


@pytest.mark.parametrize("where", [0, 4, 1000, len(MODEL) // 2, len(MODEL) - 1])
def test_a_changed_model_byte_is_refused(where: int) -> None:
    payload = bytearray(sign_model(MODEL, FLEET, issued=ISSUED))
    payload[len(payload) - len(MODEL) + where] ^= 0x01
    err = refused(bytes(payload), "mismatch")
    assert "SHA-256" in str(err)


def test_changed_claims_or_header_break_the_signature() -> None:
    token, model = split(sign_model(MODEL, FLEET, issued=ISSUED))
    header, claims, signature = token.split(".")
    changed = dict(json.loads(b64url_decode(claims)), model_version="eta-test-9")
    forged_claims = b64url_encode(canonical_json(changed))
    refused(f"{header}.{forged_claims}.{signature}".encode() + b"\n" + model, "bad_signature")
    # A later issued, to jump the ordering rule: same.
    later = dict(json.loads(b64url_decode(claims)), issued="2027-01-01T00:00:00.000Z")
    forged_claims = b64url_encode(canonical_json(later))
    refused(f"{header}.{forged_claims}.{signature}".encode() + b"\n" + model, "bad_signature")
    other_header = b64url_encode(canonical_json({**json.loads(b64url_decode(header)), "extra": 1}))
    refused(f"{other_header}.{claims}.{signature}".encode() + b"\n" + model, "bad_signature")


def test_a_pod_or_another_token_type_is_not_a_model() -> None:
    pod_typed = signed_by_hand(claims_of(MODEL), MODEL, typ="pod+jwt")
    err = refused(pod_typed, "malformed")
    assert "typ" in str(err)


def test_a_cut_anywhere_is_refused() -> None:
    payload = sign_model(MODEL, FLEET, issued=ISSUED)
    token, model = split(payload)
    end = len(token)
    # The payload cut short anywhere in the signature: there is no newline yet.
    for n in range(end + 1):
        refused(payload[:n], "malformed")
    # Cut short in the model.
    for n in (end + 1, end + 2, end + 100, len(payload) - 1):
        refused(payload[:n], "mismatch")
    # The signature cut at every character, the model whole after it.
    reasons = set()
    for n in range(end):
        with pytest.raises(ModelUpdateError) as caught:
            verify(token[:n].encode() + b"\n" + model)
        reasons.add(caught.value.reason)
    assert reasons <= {"malformed", "bad_signature"}
    # Two newlines, or none at all, or something else than ASCII first.
    refused(token.encode() + b"\n\n" + model, "mismatch")
    refused(token.encode() + model, "malformed")
    refused("é".encode() + token.encode() + b"\n" + model, "malformed")


def test_an_oversized_payload_is_refused_before_anything_is_read() -> None:
    err = refused(b"x" * (MAX_PAYLOAD_BYTES + 1), "malformed")
    assert "limit" in str(err)


@pytest.mark.parametrize(
    "junk",
    [b"not a model at all", b"TFL3" * 40, MODEL[: len(MODEL) // 2]],
    ids=["text", "identifier only", "half a model"],
)
def test_a_signed_file_that_is_not_a_model_is_refused(junk: bytes) -> None:
    claims = claims_of(MODEL, sha256=hashlib.sha256(junk).hexdigest(), size_bytes=len(junk))
    refused(signed_by_hand(claims, junk), "not_a_model")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"model_version": "eta-test-9"}, "model_version"),
        ({"features_version": "eta-features/0"}, "features_version"),
    ],
)
def test_claims_that_name_another_model_are_refused(changes: dict[str, Any], says: str) -> None:
    err = refused(signed_by_hand(claims_of(MODEL, **changes), MODEL), "mismatch")
    assert says in str(err)


@pytest.mark.parametrize(
    "changes",
    [
        {"model_version": ...},
        {"sha256": ...},
        {"issued": ...},
        {"size_bytes": True},
        {"size_bytes": "36768"},
        {"sha256": "ABC"},
        {"issued": "2026-11-21T07:00:00+01:00"},
        {"issued": "2026-02-30T07:00:00Z"},
        {"devices": []},
        {"devices": "van-0042"},
        {"devices": ["van/0042"]},
        {"model_version": ""},
        {"not_before": "2027-01-01T00:00:00Z"},
    ],
    ids=repr,
)
def test_claims_out_of_the_contract_are_refused(changes: dict[str, Any]) -> None:
    refused(signed_by_hand(claims_of(MODEL, **changes), MODEL), "bad_claims")


def test_a_model_for_other_vans_is_refused_by_this_one() -> None:
    payload = sign_model(MODEL, FLEET, issued=ISSUED, devices=["van-7", "van-8"])
    err = refused(payload, "not_for_device")
    assert DEVICE in str(err)
    assert verify(payload, device_id="van-8").claims.devices == ("van-7", "van-8")


def test_sign_model_refuses_what_a_van_would_refuse() -> None:
    with pytest.raises(ModelUpdateError) as caught:
        sign_model(b"TFL3" * 40, FLEET, issued=ISSUED)
    assert caught.value.reason == "not_a_model"
    with pytest.raises(ModelUpdateError) as caught:
        sign_model(MODEL, FLEET, issued=ISSUED, model_version="eta-test-2")
    assert caught.value.reason == "mismatch"
    with pytest.raises(ModelUpdateError, match="timezone"):
        sign_model(MODEL, FLEET, issued=datetime(2026, 11, 21, 6, 0))
    with pytest.raises(ModelUpdateError, match="device id"):
        sign_model(MODEL, FLEET, issued=ISSUED, devices=["van 1"])
    assert verify(sign_model(MODEL, FLEET, issued=ISSUED, model_version="eta-test-1"))


# -- the ordering rule ---------------------------------------------------------------


def signed(model: bytes, issued: datetime, key: Ed25519PrivateKey = FLEET) -> SignedModel:
    return verify(sign_model(model, key, issued=issued), key)


def test_a_later_model_replaces_the_running_one_and_anything_replaces_none() -> None:
    running = signed(MODEL, ISSUED)
    assert admit_model(None, running) is True
    assert admit_model(running, signed(NEWER, ISSUED + timedelta(milliseconds=1))) is True


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(days=-1)], ids=["same", "older"])
def test_another_model_issued_no_later_is_refused(delta: timedelta) -> None:
    running = signed(NEWER, ISSUED)
    with pytest.raises(ModelUpdateError) as caught:
        admit_model(running, signed(MODEL, ISSUED + delta))
    assert caught.value.reason == "stale"
    assert "eta-test-2" in str(caught.value)


def test_the_running_model_offered_again_is_nothing_to_do() -> None:
    running = signed(MODEL, ISSUED)
    assert admit_model(running, signed(MODEL, ISSUED)) is False
    # The same file, signed earlier (by this or another trusted key): still itself.
    assert admit_model(running, signed(MODEL, ISSUED - timedelta(days=3))) is False
    assert admit_model(running, signed(MODEL, ISSUED, NEXT_FLEET)) is False
    # Signed again later (a key rotation): its new signature is the one to keep.
    assert admit_model(running, signed(MODEL, ISSUED + timedelta(days=3), NEXT_FLEET)) is True


# -- the stored models, and the model a van starts on --------------------------------


def store_in(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state" / "eta")


def shipped() -> RunningModel:
    return RunningModel(predictor=EtaPredictor.baseline("test fallback"), source="shipped")


def test_the_store_writes_whole_private_files_and_clears_both(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert store.read(store.current) is None
    assert store.clear() is False
    first, second = b"first payload", b"second payload"
    store.install(first, None)
    assert (store.read(store.current), store.read(store.previous)) == (first, None)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    store.install(second, first)
    assert (store.read(store.current), store.read(store.previous)) == (second, first)
    for path in (store.current, store.previous):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in store.directory.iterdir()) == ["current.model", "previous.model"]
    store.install(b"third", None)  # replacing the shipped model: no rollback target
    assert store.read(store.previous) is None
    assert store.clear() is True
    assert list(store.directory.iterdir()) == []


@needs_interpreter
def test_install_keeps_the_running_model_as_previous_and_refuses_without_a_trace(
    tmp_path: Path,
) -> None:
    store = store_in(tmp_path)
    keys = [FLEET.public_key()]
    first = sign_model(MODEL, FLEET, issued=ISSUED)
    running = install_model(store, first, keys, device_id=DEVICE, running=shipped())
    assert running is not None
    assert (running.source, running.predictor.model_version) == ("downlink", "eta-test-1")
    assert (store.read(store.current), store.read(store.previous)) == (first, None)
    assert install_model(store, first, keys, device_id=DEVICE, running=running) is None
    second = sign_model(NEWER, FLEET, issued=ISSUED + timedelta(hours=1))
    newer = install_model(store, second, keys, device_id=DEVICE, running=running)
    assert newer is not None
    assert newer.predictor.model_version == "eta-test-2"
    assert (store.read(store.current), store.read(store.previous)) == (second, first)
    # Signed by the fleet, but a model the agent cannot run: refused at load, nothing
    # stored.
    wrong = tiny_model(0.0, "eta-test-3", output="seconds")
    with pytest.raises(ModelUpdateError) as caught:
        install_model(
            store,
            sign_model(wrong, FLEET, issued=ISSUED + timedelta(hours=2)),
            keys,
            device_id=DEVICE,
            running=newer,
        )
    assert caught.value.reason == "not_a_model"
    assert "output" in str(caught.value)
    assert (store.read(store.current), store.read(store.previous)) == (second, first)


@needs_interpreter
def test_the_running_model_signed_by_the_next_key_keeps_running_and_rollback_target(
    tmp_path: Path,
) -> None:
    store = store_in(tmp_path)
    keys = [FLEET.public_key(), NEXT_FLEET.public_key()]
    first = sign_model(MODEL, FLEET, issued=ISSUED)
    old_signature = sign_model(NEWER, FLEET, issued=ISSUED + timedelta(hours=1))
    running = install_model(store, first, keys, device_id=DEVICE, running=shipped())
    assert running is not None
    running = install_model(store, old_signature, keys, device_id=DEVICE, running=running)
    assert running is not None
    rotated = sign_model(NEWER, NEXT_FLEET, issued=ISSUED + timedelta(days=1))
    again = install_model(store, rotated, keys, device_id=DEVICE, running=running)
    assert again is not None
    assert again.predictor is running.predictor  # not loaded again
    assert again.signed is not None
    assert again.signed.kid == key_thumbprint(NEXT_FLEET.public_key())
    assert (store.read(store.current), store.read(store.previous)) == (rotated, first)
    # Once the vans drop the old key, the stored model still verifies at start.
    restarted = start_model(store, [NEXT_FLEET.public_key()], device_id=DEVICE, fallback=shipped)
    assert (restarted.source, restarted.predictor.model_version) == ("downlink", "eta-test-2")


def fleet_key_file(tmp_path: Path, key: Ed25519PrivateKey = FLEET) -> Path:
    path = tmp_path / f"fleet-{key_thumbprint(key.public_key())[:8]}.pub.pem"
    path.write_bytes(public_key_pem(key.public_key()))
    return path


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # in the model: its SHA-256 no longer matches
    path.write_bytes(bytes(data))


@needs_interpreter
@pytest.mark.usefixtures("no_blocking")
def test_a_van_starts_on_its_downlinked_model_off_the_loop(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.install(sign_model(MODEL, FLEET, issued=ISSUED), None)
    agent = idle_agent(tmp_path, device_id=DEVICE, model_keys=(fleet_key_file(tmp_path),))
    health = health_after_load(agent)
    assert (health["eta_model"], health["eta_model_source"]) == ("eta-test-1", "downlink")
    assert health["models_refused"] == 0
    assert agent.eta_model is not None
    assert agent.eta_model.signed is not None
    assert agent.eta_model.signed.issued == ISSUED


@needs_interpreter
def test_a_damaged_current_model_rolls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_in(tmp_path)
    first = sign_model(MODEL, FLEET, issued=ISSUED)
    store.install(sign_model(NEWER, FLEET, issued=ISSUED + timedelta(hours=1)), first)
    corrupt(store.current)
    agent = idle_agent(tmp_path, device_id=DEVICE, model_keys=(fleet_key_file(tmp_path),))
    with caplog.at_level(logging.WARNING, logger="firmware_agent.eta.model_store"):
        health = health_after_load(agent)
    assert (health["eta_model"], health["eta_model_source"]) == ("eta-test-1", "downlink")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("current.model refused" in w and "SHA-256" in w for w in warnings), warnings
    assert any("rolled back to the previous one, eta-test-1" in w for w in warnings), warnings
    # The running model (not the damaged file) becomes the rollback target of the next.
    assert agent.eta_model is not None
    third = sign_model(tiny_model(0.1, "eta-test-3"), FLEET, issued=ISSUED + timedelta(hours=2))
    keys = [FLEET.public_key()]
    assert install_model(store, third, keys, device_id=DEVICE, running=agent.eta_model)
    assert store.read(store.previous) == first


@needs_interpreter
@pytest.mark.parametrize("eta_model", [False, True], ids=["shipped", "configured file"])
def test_both_models_damaged_start_the_vans_own(tmp_path: Path, eta_model: bool) -> None:
    store = store_in(tmp_path)
    store.install(
        sign_model(NEWER, FLEET, issued=ISSUED + timedelta(hours=1)),
        sign_model(MODEL, FLEET, issued=ISSUED),
    )
    corrupt(store.current)
    corrupt(store.previous)
    own: dict[str, Any] = {}
    if eta_model:
        own["eta_model"] = tmp_path / "own.tflite"
        own["eta_model"].write_bytes(tiny_model(0.0, "eta-own"))
    agent = idle_agent(tmp_path, device_id=DEVICE, model_keys=(fleet_key_file(tmp_path),), **own)
    health = health_after_load(agent)
    expected = ("eta-own", "file") if eta_model else (SHIPPED_VERSION, "shipped")
    assert (health["eta_model"], health["eta_model_source"]) == expected


@needs_interpreter
def test_a_stored_model_whose_key_is_no_longer_trusted_is_not_run(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.install(sign_model(MODEL, FLEET, issued=ISSUED), None)
    rotated = idle_agent(
        tmp_path, device_id=DEVICE, model_keys=(fleet_key_file(tmp_path, NEXT_FLEET),)
    )
    assert health_after_load(rotated)["eta_model_source"] == "shipped"
    no_keys = idle_agent(tmp_path, device_id=DEVICE)
    assert health_after_load(no_keys)["eta_model"] == SHIPPED_VERSION
    assert store.read(store.current) is not None  # left for a later key or model


def test_a_model_key_file_that_cannot_be_used_stops_the_start(tmp_path: Path) -> None:
    private = tmp_path / "fleet.key"
    private.write_bytes(b"-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n")
    for path, says in ((tmp_path / "absent.pem", "cannot read"), (private, "private key")):
        agent = idle_agent(tmp_path, device_id=DEVICE, model_keys=(path,))
        with pytest.raises(ConfigError, match=says):
            asyncio.run(agent.load_eta())
    # With ETAs off, the keys are not even read.
    assert (
        asyncio.run(
            idle_agent(tmp_path, device_id=DEVICE, eta=False, model_keys=(private,)).load_eta()
        )
        is None
    )


@pytest.mark.parametrize(
    ("argv", "toml", "environ", "expected"),
    [
        ((), "", {}, ()),
        ((), "[eta]\nmodel_keys = ['a.pem', 'b.jwk']\n", {}, ("a.pem", "b.jwk")),
        ((), "", {"FLEET_ETA_MODEL_KEYS": "/k/a.pem:/k/b.pem"}, ("/k/a.pem", "/k/b.pem")),
        ((), "[eta]\nmodel_keys = ['x']\n", {"FLEET_ETA_MODEL_KEYS": "a,b,"}, ("a", "b")),
        (
            ("--eta-model-key", "c", "--eta-model-key", "d"),
            "",
            {"FLEET_ETA_MODEL_KEYS": "a"},
            ("c", "d"),
        ),
    ],
)
def test_fleet_agent_run_takes_the_model_keys(
    tmp_path: Path,
    argv: tuple[str, ...],
    toml: str,
    environ: dict[str, str],
    expected: tuple[str, ...],
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"device_id = '{DEVICE}'\n{toml}")
    args = run_args("--config", str(config), "--nmea-file", "day.nmea", *argv)
    agent_config = build_config(args, settings(args, environ))
    assert agent_config.model_keys == tuple(Path(p) for p in expected)


@pytest.mark.parametrize("value", ["3", "'a.pem'", "[3]"])
def test_model_keys_of_the_wrong_type_are_a_config_error(tmp_path: Path, value: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"device_id = '{DEVICE}'\n[eta]\nmodel_keys = {value}\n")
    args = run_args("--config", str(config), "--nmea-file", "day.nmea")
    with pytest.raises(ConfigError, match=r"eta\.model_keys.*agent\.toml \[eta\]"):
        build_config(args, settings(args, {}))


# -- fleet-ingest --------------------------------------------------------------------


def fleet_ingest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")}
    return subprocess.run(
        [INGEST, *map(str, args)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def ingest_settings(path: Path, port: int, database: Path | None = None) -> Path:
    text = f'[mqtt]\nport = {port}\nclient_id = "dispatch-test"\n'
    if database is not None:
        text += f'[database]\nurl = "sqlite:///{database}"\n'
    path.write_text(text)
    return path


@needs_interpreter
def test_model_key_then_sign_model_make_what_a_van_verifies(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "fleet-model.pem"
    r = fleet_ingest("model-key", "--out", key)
    assert r.returncode == 0, r.stderr
    public = tmp_path / "keys" / "fleet-model.pub.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kid = key_thumbprint(load_public_key(public))
    assert r.stdout.splitlines() == [
        f"private key: {key} (0600: keep it off the vans and the broker)",
        f"public key: {public} (for the vans: [eta] model_keys)",
        f"kid: {kid}",
    ]
    r = fleet_ingest("model-key", "--out", key)
    assert (r.returncode, r.stderr) == (
        1,
        f"fleet-ingest: {key} exists: a model key is never overwritten\n",
    )
    assert key_thumbprint(load_public_key(public)) == kid  # untouched

    model = tmp_path / "m.tflite"
    model.write_bytes(MODEL)
    out = tmp_path / "m.signed"
    r = fleet_ingest("sign-model", "--key", key, "--model", model, "--out", out, "--device", DEVICE)
    assert r.returncode == 0, r.stderr
    assert f"model eta-test-1, {len(MODEL)} bytes" in r.stdout
    assert f"key {kid}, for {DEVICE}" in r.stdout
    signed = verify_model(out.read_bytes(), [load_public_key(public)], device_id=DEVICE)
    assert signed.model == MODEL
    assert signed.claims.devices == (DEVICE,)
    assert abs(signed.issued - datetime.now(UTC)) < timedelta(minutes=1)


def test_sign_model_usage_errors_exit_2(tmp_path: Path) -> None:
    key = tmp_path / "fleet-model.pem"
    assert fleet_ingest("model-key", "--out", key).returncode == 0
    model = tmp_path / "m.tflite"
    model.write_bytes(MODEL)
    contract_breaker = tmp_path / "seconds.tflite"
    contract_breaker.write_bytes(tiny_model(0.0, "eta-x", output="seconds"))
    loose = tmp_path / "loose.pem"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    out = tmp_path / "out.signed"
    cases: list[tuple[tuple[str | Path, ...], str]] = [
        (("--key", key, "--model", tmp_path / "absent.tflite"), "cannot read"),
        (("--key", key, "--model", contract_breaker), "the vans would refuse it"),
        (("--key", tmp_path / "fleet-model.pub.pem", "--model", model), "model key"),
        (("--key", loose, "--model", model), "group or others"),
        (("--key", key, "--model", model, "--device", "van/1"), "invalid device id"),
    ]
    for args, message in cases:
        r = fleet_ingest("sign-model", *args, "--out", out)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not out.exists()


def test_publish_model_usage_errors_and_an_unreachable_broker(tmp_path: Path) -> None:
    signed_for = tmp_path / "for-van-7.signed"
    signed_for.write_bytes(sign_model(MODEL, FLEET, issued=ISSUED, devices=["van-7"]))
    settings_file = ingest_settings(tmp_path / "ingest.toml", free_port())
    cases: list[tuple[tuple[str | Path, ...], int, str]] = [
        (("--signed", signed_for), 2, "one of the arguments --device --all is required"),
        (("--device", DEVICE), 2, "one of the arguments --signed --clear is required"),
        (("--signed", signed_for, "--clear", "--all"), 2, "not allowed with"),
        (("--signed", tmp_path / "absent", "--device", DEVICE), 2, "cannot read"),
        (("--signed", settings_file, "--device", DEVICE), 2, "is not a signed model"),
        (("--signed", signed_for, "--device", DEVICE), 2, f"{DEVICE} would refuse it"),
        (("--clear", "--device", "van/7"), 2, "invalid device id"),
        (("--signed", signed_for, "--device", "van-7"), 1, "cannot connect to the broker"),
    ]
    for args, code, message in cases:
        r = fleet_ingest("publish-model", *args, "--config", settings_file)
        assert r.returncode == code, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_publish_model_all_reaches_every_enabled_van_retained(tmp_path: Path) -> None:
    db = tmp_path / "ingest.sqlite3"
    for device in ("van-1", "van-2", "van-3"):
        pem = tmp_path / f"{device}.pem"
        pem.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
        assert (
            fleet_ingest(
                "device", "add", device, "--pubkey", pem, "--database-url", f"sqlite:///{db}"
            ).returncode
            == 0
        )
    assert (
        fleet_ingest("device", "disable", "van-2", "--database-url", f"sqlite:///{db}").returncode
        == 0
    )
    payload = sign_model(MODEL, FLEET, issued=ISSUED)
    signed_file = tmp_path / "m.signed"
    signed_file.write_bytes(payload)
    with Mosquitto(tmp_path / "broker") as broker:
        settings_file = ingest_settings(tmp_path / "ingest.toml", broker.port, db)
        r = fleet_ingest(
            "publish-model", "--signed", signed_file, "--all", "--config", settings_file
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == (
            f"published model eta-test-1 ({len(payload)} bytes), retained, to 2 device(s)"
        )
        retained = asyncio.run(retained_models(broker.port, ["van-1", "van-2", "van-3"]))
        assert retained == {"van-1": payload, "van-3": payload}
        r = fleet_ingest("publish-model", "--clear", "--all", "--config", settings_file)
        assert r.returncode == 0, r.stderr
        assert asyncio.run(retained_models(broker.port, ["van-1", "van-2", "van-3"])) == {}


async def retained_models(port: int, devices: list[str]) -> dict[str, bytes]:
    """The retained model payload of each device that has one."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for device in devices:
            await client.subscribe(downlink_topic(device, "model"), qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    found[str(message.topic).split("/")[2]] = message.payload
    return found


def test_a_publish_the_broker_refuses_is_an_error(tmp_path: Path) -> None:
    # An ACL as the shipped one's spirit: this client may write no model topic.
    acl = tmp_path / "acl"
    acl.write_text("user nobody\ntopic write fleet/v1/+/manifest\n")
    with Mosquitto(tmp_path / "broker", extra=f"acl_file {acl}") as broker:
        mqtt = MqttSettings(port=broker.port, client_id="dispatch-test")
        with pytest.raises(PublishError, match="refused by the broker: Not authorized"):
            publish_retained(mqtt, [(downlink_topic(DEVICE, "model"), b"x")])


# -- a van on a real broker ----------------------------------------------------------


def parked_nmea(path: Path, minutes: int) -> Path:
    """A van parked at the street's origin, a fix a second from T0."""
    body = b"".join(
        line(
            f"GPRMC,{(T0 + timedelta(seconds=i)).strftime('%H%M%S.00')},A,4800.000,N,"
            "01100.000,E,0.0,0.0,211126,,,A"
        )
        for i in range(minutes * 60)
    )
    path.write_bytes(body)
    return path


@dataclasses.dataclass
class Seen:
    """What a backend sees of the van: status healths and eta records (with seq)."""

    health: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    etas: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)

    def eta_models(self, after_seq: int = 0) -> set[str]:
        return {r["model"] for seq, r in self.etas if seq > after_seq}


@contextlib.asynccontextmanager
async def watching(port: int) -> AsyncIterator[Seen]:
    seen = Seen()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"fleet/v1/{DEVICE}/status", qos=1)
        await client.subscribe(f"fleet/v1/{DEVICE}/events", qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if str(message.topic).endswith("/status"):
                    seen.health.append(dict(decode_status(message.payload).health))
                    continue
                for envelope in decode_event_message(message.payload):
                    if envelope.record["type"] == "eta":
                        seen.etas.append((envelope.seq, envelope.record))

        task = asyncio.create_task(read())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def until(condition: Callable[[], Any], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def publish(port: int, payload: bytes) -> None:
    """A publish on the van's model topic, not retained (as an attacker might)."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(downlink_topic(DEVICE, "model"), payload, qos=1)


@needs_interpreter
@pytest.mark.usefixtures("no_blocking")
def test_a_van_takes_a_signed_model_from_the_broker_and_keeps_it(tmp_path: Path) -> None:
    state = tmp_path / "van"
    state.mkdir()
    # Two stops kilometres east of a van parked all day: it predicts, never arrives.
    (state / "manifest.json").write_text(
        json.dumps(
            {
                "route_id": "R1",
                "device_id": DEVICE,
                "date": "2026-11-21",
                "stops": [stop("S1", 3000.0), stop("S2", 6000.0)],
            }
        )
    )
    nmea = parked_nmea(tmp_path / "parked.nmea", minutes=60)
    keys = (fleet_key_file(tmp_path),)
    model_a = tiny_model(2.0, "eta-test-a")
    signed_a = tmp_path / "a.signed"
    signed_a.write_bytes(sign_model(model_a, FLEET, issued=ISSUED))
    forged = sign_model(tiny_model(-2.0, "eta-forged"), OTHER, issued=ISSUED + timedelta(days=1))
    replayed = sign_model(tiny_model(1.0, "eta-test-old"), FLEET, issued=ISSUED - timedelta(days=1))
    # Read by the test itself: ModelStore's reads would block the agent's loop.
    current, previous = state / "eta" / "current.model", state / "eta" / "previous.model"

    async def run_van(broker: Mosquitto, scenario: Callable[[Agent, Seen], Any]) -> Agent:
        agent = Agent(
            AgentConfig(
                state_dir=state,
                # ETAs wait in an events batch for up to events_batch_max_age_s: this
                # test watches them come.
                uplink=UplinkConfig(device_id=DEVICE, port=broker.port, events_batch_max_age_s=1.0),
                nmea_file=nmea,
                speed=20.0,
                model_keys=keys,
                # An ETA heartbeat every 20 s of GNSS time (1 s here): records with
                # the running model keep coming whatever the models predict.
                van=VanConfig(eta=EtaConfig(heartbeat_s=20.0)),
            )
        )
        async with watching(broker.port) as seen:
            task = asyncio.create_task(agent.run())
            try:
                await until(lambda: agent.uplink is not None and agent.uplink.connected.is_set())
                await scenario(agent, seen)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return agent

    async def first_day(agent: Agent, seen: Seen) -> None:
        assert agent.health()["eta_model"] == SHIPPED_VERSION
        await until(lambda: SHIPPED_VERSION in seen.eta_models())
        r = await asyncio.to_thread(
            fleet_ingest, "publish-model", "--signed", signed_a, "--device", DEVICE,
            "--config", settings_file,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"fleet/v1/{DEVICE}/model: Success\n")
        await until(lambda: agent.counts.models == 1)
        assert (agent.health()["eta_model"], agent.health()["eta_model_source"]) == (
            "eta-test-a",
            "downlink",
        )
        assert current.read_bytes() == signed_a.read_bytes()
        assert not previous.exists()  # it replaced the shipped model
        # The dispatcher sees it at once, and the ETAs the van publishes now say so.
        await until(lambda: seen.health[-1].get("eta_model") == "eta-test-a")
        assert seen.health[-1]["eta_model_source"] == "downlink"
        await until(lambda: "eta-test-a" in seen.eta_models())
        # A forged model (another key) and a replayed older one: refused, counted, the
        # model stays.
        await publish(broker.port, forged)
        await until(lambda: agent.counts.models_refused == 1)
        await publish(broker.port, replayed)
        await until(lambda: agent.counts.models_refused == 2)
        assert agent.uplink is not None
        assert agent.uplink.counts.downlink_errors == 2
        assert agent.counts.models == 1
        assert agent.health()["eta_model"] == "eta-test-a"
        assert current.read_bytes() == signed_a.read_bytes()
        await until(lambda: seen.health[-1].get("models_refused") == 2)

    async def after_restart(agent: Agent, seen: Seen) -> None:
        assert agent.uplink is not None
        # The birth, before any downlink: the model sent yesterday, from its own disk.
        await until(lambda: any(h.get("models_refused") == 0 for h in seen.health))
        birth = next(h for h in seen.health if h.get("models_refused") == 0)
        assert (birth["eta_model"], birth["eta_model_source"]) == ("eta-test-a", "downlink")
        # The broker sends the retained model again: the running one, nothing to do.
        await until(lambda: agent.uplink is not None and agent.uplink.counts.downlink >= 1)
        await asyncio.sleep(0.2)
        assert (agent.counts.models, agent.counts.models_refused) == (0, 0)
        assert agent.uplink.counts.downlink_errors == 0
        await until(lambda: "eta-test-a" in seen.eta_models(after_seq=events_before_restart))
        # Dispatch clears the model: back to the shipped one, nothing left on disk.
        r = await asyncio.to_thread(
            fleet_ingest, "publish-model", "--clear", "--device", DEVICE, "--config", settings_file
        )
        assert r.returncode == 0, r.stderr
        await until(lambda: agent.counts.models == 1)
        health = agent.health()
        assert (health["eta_model"], health["eta_model_source"]) == (SHIPPED_VERSION, "shipped")
        assert not current.exists()
        assert not previous.exists()
        await until(lambda: seen.health[-1].get("eta_model_source") == "shipped")
        last = max(seq for seq, _ in seen.etas)
        await until(lambda: SHIPPED_VERSION in seen.eta_models(after_seq=last))

    with Mosquitto(tmp_path / "broker") as broker:
        settings_file = ingest_settings(tmp_path / "ingest.toml", broker.port)
        first = asyncio.run(run_van(broker, first_day))
        # The events outbox was new: its records are seqs 1..n. Those the first run had
        # not sent go out again after the restart; ETAs of the second run come after.
        events_before_restart = first.counts.records["events"]
        asyncio.run(run_van(broker, after_restart))
