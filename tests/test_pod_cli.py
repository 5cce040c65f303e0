"""``fleet-agent pod verify`` and ``pod pubkey`` end to end, on real files."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.jws import b64url_encode
from firmware_agent.contract.keys import key_thumbprint, load_or_create_device_key
from firmware_agent.pod.chain import PodChain
from firmware_agent.pod.cli import register


def run(*argv: str) -> int:
    """Parse like ``fleet-agent`` does (a subparser per command, ``func`` dispatch)."""
    parser = argparse.ArgumentParser(prog="fleet-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


@pytest.fixture
def device(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    path = tmp_path / "state" / "device.key"
    return path, load_or_create_device_key(path)


def issue(key: Ed25519PrivateKey, n: int) -> list[str]:
    chain = PodChain("van-0007", key)
    return [chain.issue({"parcel": f"P{i}", "stop_id": f"S{i:03d}"}).token for i in range(1, n + 1)]


def write_pubkey(
    tmp_path: Path,
    device: tuple[Path, Ed25519PrivateKey],
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    assert run("pod", "pubkey", "--key", str(device[0]), "--format", fmt) == 0
    out = tmp_path / f"device.pub.{fmt}"
    out.write_text(capsys.readouterr().out)
    return out


def test_pubkey_prints_the_public_key_only(
    tmp_path: Path, device: tuple[Path, Ed25519PrivateKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = device
    assert run("pod", "pubkey", "--key", str(path)) == 0
    pem = capsys.readouterr().out
    assert (
        pem
        == key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert run("pod", "pubkey", "--key", str(path), "--format", "jwk") == 0
    jwk = json.loads(capsys.readouterr().out)
    assert set(jwk) == {"kty", "crv", "x", "kid", "use"}
    assert jwk["kid"] == key_thumbprint(key.public_key())
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert b64url_encode(raw) not in json.dumps(jwk)
    assert "PRIVATE" not in pem


def test_pubkey_never_creates_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "device.key"
    assert run("pod", "pubkey", "--key", str(absent)) == 2
    assert "no device key" in capsys.readouterr().err
    assert not absent.exists()


def test_pubkey_refuses_an_exposed_key(
    device: tuple[Path, Ed25519PrivateKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = device
    path.chmod(0o644)
    assert run("pod", "pubkey", "--key", str(path)) == 2
    captured = capsys.readouterr()
    assert "mode 0644" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("fmt", ["pem", "jwk"])
def test_verify_a_valid_file(
    tmp_path: Path,
    device: tuple[Path, Ed25519PrivateKey],
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    pub = write_pubkey(tmp_path, device, fmt, capsys)
    pods = tmp_path / "pods.jws"
    pods.write_text("\n".join(issue(device[1], 20)) + "\n")
    assert run("pod", "verify", str(pods), "--pubkey", str(pub), "--from-genesis") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{pods}: OK: 20 PODs, seq 1..20, device van-0007\n")
    assert "after seq 20 cannot show" in out


def test_verify_names_each_problem_with_its_line(
    tmp_path: Path, device: tuple[Path, Ed25519PrivateKey], capsys: pytest.CaptureFixture[str]
) -> None:
    pub = write_pubkey(tmp_path, device, "pem", capsys)
    tokens = issue(device[1], 10)
    forged = issue(Ed25519PrivateKey.generate(), 3)[2]
    lines = [
        json.dumps({"type": "status", "online": True}),  # line 1: skipped
        *(json.dumps({"type": "pod", "time": "t", "jws": t}) for t in tokens[:2]),  # 2, 3
        json.dumps({"type": "telemetry", "fixes": []}),  # 4: skipped
        json.dumps({"type": "pod", "jws": forged}),  # 5: forged seq 3
        *(json.dumps({"type": "pod", "jws": t}) for t in tokens[3:5]),  # 6, 7 (seq 4, 5)
        *(json.dumps({"type": "pod", "jws": t}) for t in tokens[6:]),  # 8.. (seq 6 deleted)
    ]
    pods = tmp_path / "replay.jsonl"
    pods.write_text("\n".join(lines) + "\n")
    assert run("pod", "verify", str(pods), "--pubkey", str(pub), "--device-id", "van-0007") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{pods}: 2 problem(s) in 9 PODs (7 ok, seq 1..10, device van-0007)"
    assert out[1].startswith("first problem: line 5 (seq 3): bad_signature: signed by another key")
    assert out[2].startswith("line 5 (seq 3): bad_signature: ")
    assert out[3].startswith("line 8 (seq 7): missing: seq 6 absent")
    assert len(out) == 4

    assert run("pod", "verify", str(pods), "--pubkey", str(pub), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert report["device_id"] == "van-0007"
    assert (report["records"], report["ok"], report["last_seq"]) == (9, 7, 10)
    assert [(p["line"], p["record"], p["seq"], p["kind"]) for p in report["problems"]] == [
        (5, 3, 3, "bad_signature"),
        (8, 6, 7, "missing"),
    ]
    assert report["first_problem"] == report["problems"][0]


def test_verify_garbage_line(
    tmp_path: Path, device: tuple[Path, Ed25519PrivateKey], capsys: pytest.CaptureFixture[str]
) -> None:
    pub = write_pubkey(tmp_path, device, "jwk", capsys)
    tokens = issue(device[1], 4)
    pods = tmp_path / "pods.txt"
    pods.write_text("\n".join([tokens[0], tokens[1][:30], tokens[2], tokens[3]]) + "\n")
    assert run("pod", "verify", str(pods), "--pubkey", str(pub)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("first problem: line 2 (seq ?): malformed: ")


def test_verify_reads_stdin(
    tmp_path: Path,
    device: tuple[Path, Ed25519PrivateKey],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pub = write_pubkey(tmp_path, device, "pem", capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(issue(device[1], 3))))
    assert run("pod", "verify", "-", "--pubkey", str(pub), "--json") == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True


def test_verify_with_another_devices_key(
    tmp_path: Path, device: tuple[Path, Ed25519PrivateKey], capsys: pytest.CaptureFixture[str]
) -> None:
    pub = write_pubkey(tmp_path, device, "pem", capsys)
    pods = tmp_path / "pods.jws"
    pods.write_text("\n".join(issue(Ed25519PrivateKey.generate(), 3)) + "\n")
    assert run("pod", "verify", str(pods), "--pubkey", str(pub)) == 1
    out = capsys.readouterr().out
    assert out.count("bad_signature: signed by another key") == 4  # 3 + the first problem


def test_verify_usage_and_file_errors(
    tmp_path: Path, device: tuple[Path, Ed25519PrivateKey], capsys: pytest.CaptureFixture[str]
) -> None:
    pub = write_pubkey(tmp_path, device, "pem", capsys)
    pods = tmp_path / "pods.jws"
    pods.write_text("\n".join(issue(device[1], 2)) + "\n")
    assert run("pod", "verify", str(tmp_path / "absent"), "--pubkey", str(pub)) == 2
    assert "cannot read" in capsys.readouterr().err
    assert run("pod", "verify", str(pods), "--pubkey", str(tmp_path / "absent.pem")) == 2
    assert "cannot read public key" in capsys.readouterr().err
    # The private key is not a public key, and saying so must not print it.
    assert run("pod", "verify", str(pods), "--pubkey", str(device[0])) == 2
    captured = capsys.readouterr()
    assert "is a private key" in captured.err
    assert "BEGIN" not in captured.err + captured.out
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type": "status"}\n')
    assert run("pod", "verify", str(empty), "--pubkey", str(pub)) == 2
    assert "no POD" in capsys.readouterr().err
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    assert run("pod", "verify", str(binary), "--pubkey", str(pub)) == 2
    assert "not UTF-8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        run("pod", "verify", str(pods))  # --pubkey is required
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        run("pod")
