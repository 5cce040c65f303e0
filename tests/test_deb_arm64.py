"""The van's package for a Raspberry Pi, cross-built here: ``packaging/build-deb.sh agent
--arch arm64`` on this amd64 machine.

Its control fields say arm64; every ELF file in it is AArch64 (nothing of the build
machine slipped in); the console scripts name the installed interpreter. Then its code
runs: unpacked beside Debian 12's arm64 Python runtime (tests/arm64root.py) under
qemu-user, ``fleet-agent --version`` answers, the compiled dependencies import and work
(evdev built here with the cross compiler, numpy, cryptography, pydantic-core), and
``fleet-agent doctor --json`` reports. LiteRT's aarch64 interpreter crashed (SIGSEGV)
under qemu-user when this was written, so the agent's trial of its ETA runtime
(firmware_agent/eta/interpreter.py) matters here: doctor must report, not die.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.arm64root import Arm64UnavailableError, ensure_qemu, unpack_runtime
from tests.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
EM_AARCH64 = 183
pytestmark = pytest.mark.slow


def _elf_machine(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def test_the_arm64_agent_package_is_aarch64_throughout_and_runs_under_qemu(
    tmp_path: Path,
) -> None:
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if arch != "amd64":
        pytest.skip(f"a cross build from amd64 (this machine is {arch or 'not Debian'})")
    if os.geteuid() != 0:
        pytest.skip("the cross build installs its compiler with apt: needs root")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    build = subprocess.run(
        [ROOT / "packaging/build-deb.sh", "agent", "--arch", "arm64", "--out", tmp_path],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    deb = tmp_path / f"fleet-agent_{version}_arm64.deb"
    fields = subprocess.run(
        ["dpkg-deb", "-f", deb, "Architecture", "Depends"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert "Architecture: arm64" in fields
    assert "python3.11" in fields

    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    venv = root / "opt/fleet-agent"
    machines: dict[int, list[str]] = {}
    for path in venv.rglob("*"):
        if path.is_file() and not path.is_symlink() and (m := _elf_machine(path)) is not None:
            machines.setdefault(m, []).append(str(path.relative_to(venv)))
    assert set(machines) == {EM_AARCH64}, {m: files[:3] for m, files in machines.items()}
    assert any("evdev/_input" in f for f in machines[EM_AARCH64])
    assert any("ai_edge_litert" in f for f in machines[EM_AARCH64])
    assert (venv / "bin/fleet-agent").read_text().startswith("#!/opt/fleet-agent/bin/python3.11\n")
    assert os.readlink(venv / "bin/python3.11") == "/usr/bin/python3.11"

    try:
        qemu = ensure_qemu()
        unpack_runtime(root)
    except Arm64UnavailableError as err:
        pytest.fail(str(err))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "PYTHON"))},
        "PYTHONPATH": str(venv / "lib/python3.11/site-packages"),
    }
    python = [qemu, "-L", str(root), str(root / "usr/bin/python3.11")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*python, *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )

    done = run(str(venv / "bin/fleet-agent"), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"fleet-agent {version}\n"
    probe = (
        "import platform, evdev, numpy, pydantic_core, serial\n"
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
        "key = Ed25519PrivateKey.generate()\n"
        "key.public_key().verify(key.sign(b'pod'), b'pod')\n"
        "print(platform.machine(), evdev.ecodes.KEY_ENTER, int(numpy.arange(5).sum()))\n"
    )
    done = run("-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aarch64", "28", "10"]
    state = tmp_path / "state"
    done = run(str(venv / "bin/fleet-agent"), "doctor", "--json", "--config", os.devnull,
               "--device-id", "van-0042", "--state-dir", str(state), "--mqtt-port",
               str(free_port()), "--timeout-s", "3", "--gnss-listen-s", "0.5",
               "--set", "feedback.kind=none")  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]  # a report, not a crash
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["config"]["status"] == "pass"
    assert checks["gnss.port"]["status"] == "fail"  # no receiver in this root
    assert checks["eta"]["status"] in ("pass", "warn"), checks["eta"]
