"""The Debian packages install, run and go away cleanly on a fresh Debian 12.

``packaging/build-deb.sh`` builds fleet-agent and fleet-ingest (or, to save the few
minutes, ``FLEET_TEST_DEB_DIR`` names a directory that holds them, as ``./run deb``
left them in dist/). Each one goes into its own copy of a ``debootstrap --variant=minbase
bookworm`` chroot (tests/debchroot.py: cached for the day): ``dpkg -i`` and ``apt-get -f
install``, its command answers ``--version`` and checks its packaged config, systemd
verifies the installed unit, the maintainer scripts made the system user (with the
agent's device groups) and enabled the unit without starting anything; ``dpkg -r`` keeps
the configuration, ``dpkg --purge`` leaves nothing behind: no files, no user, no group,
no unit state.

Skipped, with the reason, without root, debootstrap or the Debian mirror.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.debchroot import ChrootUnavailableError, ensure_base, fresh_chroot, run_in

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    try:
        ensure_base()
    except ChrootUnavailableError as err:
        pytest.skip(str(err))
    given = os.environ.get("FLEET_TEST_DEB_DIR")
    if given:
        out = Path(given)
    else:
        out = tmp_path_factory.mktemp("debs")
        build = subprocess.run(
            [ROOT / "packaging/build-deb.sh", "all", "--out", out],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert build.returncode == 0, build.stderr[-3000:]
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    found = {}
    for name in ("fleet-agent", "fleet-ingest"):
        matches = sorted(out.glob(f"{name}_*_{arch}.deb"))
        assert matches, f"no {name}_*_{arch}.deb in {out}"
        found[name] = matches[-1]
    return found


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


def _install(root: Path, deb: Path) -> None:
    shutil.copy(deb, root / "tmp" / deb.name)
    installed = run_in(root, "dpkg", "-i", f"/tmp/{deb.name}")
    # Whatever dpkg could not satisfy, apt brings (nothing, with the cached base).
    _ok(run_in(root, "apt-get", "-f", "install", "-y", "-q"))
    assert installed.returncode == 0, installed.stderr
    status = _ok(run_in(root, "dpkg-query", "-W", "-f=${Status}", deb.name.split("_")[0]))
    assert status == "install ok installed"


def _purge_leaves_nothing(root: Path, package: str, user: str, paths: list[str]) -> None:
    _ok(run_in(root, "dpkg", "-r", package))
    # remove: the configuration (and a provisioned van's keys) stay.
    assert (root / f"etc/{package}").is_dir()
    assert not (root / f"opt/{package}").exists()
    _ok(run_in(root, "dpkg", "--purge", package))
    for path in paths:
        assert not (root / path.lstrip("/")).exists(), f"{path} left after purge"
    assert run_in(root, "getent", "passwd", user).returncode == 2, f"user {user} left"
    assert run_in(root, "getent", "group", user).returncode == 2, f"group {user} left"
    leftovers = [
        str(p.relative_to(root))
        for base in ("etc/systemd/system", "var/lib/systemd/deb-systemd-helper-enabled")
        for p in (root / base).rglob(f"*{package}*")
    ]
    assert leftovers == []
    # --list exits 1 when it lists nothing.
    assert package not in run_in(root, "dpkg-statoverride", "--list").stdout
    assert run_in(root, "dpkg-query", "-W", package).returncode != 0


def _verify_unit(root: Path, package: str) -> None:
    result = run_in(root, "systemd-analyze", "verify", f"/lib/systemd/system/{package}.service")
    assert result.returncode == 0, result.stderr


def test_agent_package(debs: dict[str, Path]) -> None:
    with fresh_chroot() as root:
        _install(root, debs["fleet-agent"])
        version = _ok(run_in(root, "fleet-agent", "--version"))
        assert re.fullmatch(r"fleet-agent \d+\.\d+\.\d+\S*\n", version)
        commands = re.search(r"\{([a-z,-]+)\}", _ok(run_in(root, "fleet-agent", "--help")))
        assert commands is not None
        assert "doctor" in commands.group(1).split(",")
        # Not provisioned yet: the whole report, every probe run (no receiver, no broker
        # in a chroot: failures), the missing identity failed (exit 1).
        report = run_in(root, "fleet-agent", "doctor", "--json", timeout_s=120)
        assert report.returncode == 1, report.stderr
        doc = json.loads(report.stdout)
        status = {c["name"]: c["status"] for c in doc["checks"]}
        assert status["config"] == "pass", doc
        assert status["identity"] == "fail", doc
        assert status["gnss.port"] == "fail", doc
        assert doc["device_id"] is None
        # With a device id: no identity failure, the rest as before.
        report = run_in(
            root, "fleet-agent", "doctor", "--json", "--device-id", "van-0001", timeout_s=120
        )
        assert report.returncode in (0, 1), report.stderr
        doc = json.loads(report.stdout)
        assert "identity" not in {c["name"] for c in doc["checks"]}
        assert doc["device_id"] == "van-0001"
        _verify_unit(root, "fleet-agent")

        groups = _ok(run_in(root, "id", "-nG", "fleet")).split()
        assert {"fleet", "dialout", "input", "gpio"} <= set(groups)
        assert _ok(run_in(root, "getent", "passwd", "fleet")).strip().endswith(":/usr/sbin/nologin")
        stat = _ok(
            run_in(root, "stat", "-c", "%U:%G %a", "/etc/fleet-agent", "/var/lib/fleet-agent")
        )
        assert stat.split("\n")[:2] == ["root:fleet 750", "fleet:fleet 700"]
        assert (
            root / "etc/systemd/system/multi-user.target.wants/fleet-agent.service"
        ).is_symlink()
        assert (root / "lib/udev/rules.d/99-fleet-gateway.rules").is_file()
        conffiles = _ok(run_in(root, "dpkg-query", "-W", "-f=${Conffiles}", "fleet-agent"))
        assert "/etc/fleet-agent/agent.toml" in conffiles
        # The packaged byte code is what ran (it names the installed paths, and is not
        # stale): the commands above wrote no .pyc of their own.
        packaged = set(_ok(run_in(root, "dpkg", "-L", "fleet-agent")).split("\n"))
        written = {
            "/" + str(p.relative_to(root)) for p in (root / "opt/fleet-agent").rglob("*.pyc")
        }
        assert written - packaged == set()
        assert sorted(p.name for p in (root / "opt/fleet-agent/bin").glob("fleet-*")) == [
            "fleet-agent"
        ]
        # Installing again (what an upgrade runs: prerm upgrade, postinst configure)
        # keeps the installer's agent.toml and the directory's owner.
        toml = root / "etc/fleet-agent/agent.toml"
        toml.write_text('device_id = "van-0042"\n' + toml.read_text())
        _install(root, debs["fleet-agent"])
        assert toml.read_text().startswith('device_id = "van-0042"\n')
        assert _ok(run_in(root, "stat", "-c", "%U:%G %a", "/etc/fleet-agent")) == "root:fleet 750\n"
        assert _ok(run_in(root, "fleet-agent", "config")).count('"van-0042"') == 1
        # A provisioned van's files, which purge must remove with the rest.
        (root / "etc/fleet-agent/van.key").write_text("key")
        (root / "var/lib/fleet-agent/outbox.db").write_text("db")

        _purge_leaves_nothing(
            root,
            "fleet-agent",
            "fleet",
            [
                "/opt/fleet-agent",
                "/etc/fleet-agent",
                "/var/lib/fleet-agent",
                "/usr/bin/fleet-agent",
                "/lib/systemd/system/fleet-agent.service",
                "/lib/udev/rules.d/99-fleet-gateway.rules",
            ],
        )
        # The device groups stay: other software uses them.
        assert run_in(root, "getent", "group", "gpio").returncode == 0


def test_ingest_package(debs: dict[str, Path]) -> None:
    with fresh_chroot() as root:
        _install(root, debs["fleet-ingest"])
        version = _ok(run_in(root, "fleet-ingest", "--version"))
        assert re.fullmatch(r"fleet-ingest \d+\.\d+\.\d+\S*\n", version)
        config = _ok(run_in(root, "fleet-ingest", "config"))  # /etc/fleet-ingest/ingest.toml
        assert "/var/lib/fleet-ingest/ingest.sqlite3" in config
        _verify_unit(root, "fleet-ingest")
        # The CRL's way to a broker on this host: shipped, valid, left disabled.
        sync = (
            "/lib/systemd/system/fleet-crl-sync.path",
            "/lib/systemd/system/fleet-crl-sync.service",
        )
        verified = run_in(root, "systemd-analyze", "verify", *sync)
        assert verified.returncode == 0, verified.stderr
        assert not (
            root / "etc/systemd/system/multi-user.target.wants/fleet-crl-sync.path"
        ).exists()
        assert _ok(run_in(root, "id", "-nG", "fleet-ingest")).split() == ["fleet-ingest"]
        stat = _ok(
            run_in(root, "stat", "-c", "%U:%G %a", "/etc/fleet-ingest", "/var/lib/fleet-ingest")
        )
        assert stat.split("\n")[:2] == ["root:fleet-ingest 750", "fleet-ingest:fleet-ingest 700"]
        # Ingest's venv has no van libraries, so no agent command either.
        assert not (root / "opt/fleet-ingest/bin/fleet-agent").exists()
        (root / "var/lib/fleet-ingest/ingest.sqlite3").write_text("db")
        _purge_leaves_nothing(
            root,
            "fleet-ingest",
            "fleet-ingest",
            [
                "/opt/fleet-ingest",
                "/etc/fleet-ingest",
                "/var/lib/fleet-ingest",
                "/usr/bin/fleet-ingest",
                "/lib/systemd/system/fleet-ingest.service",
                "/lib/systemd/system/fleet-crl-sync.path",
                "/lib/systemd/system/fleet-crl-sync.service",
            ],
        )
