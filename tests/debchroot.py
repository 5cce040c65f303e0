"""A throwaway Debian 12 (bookworm) chroot for the package tests.

The base system is made once a day with ``debootstrap --variant=minbase bookworm`` plus
what the packages need at install and what the tests run in it (python3, systemd for
``systemd-analyze verify``, init-system-helpers for the maintainer scripts), and kept as
a tarball under ``/var/cache/fleet-test-chroot`` (``FLEET_TEST_CHROOT_CACHE``) named by
the date: the first run of the day takes a few minutes, later ones unpack it in seconds.
Each test gets its own copy, removed afterwards, so a failed purge never leaks into the
next test.

Skips with the reason where the tests cannot run: not root, no debootstrap, or the
Debian mirror unreachable (``FLEET_TEST_DEBIAN_MIRROR``, default deb.debian.org).

Run as a script (``python tests/debchroot.py``) it only makes the day's cache.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_DIR = Path(os.environ.get("FLEET_TEST_CHROOT_CACHE", "/var/cache/fleet-test-chroot"))
MIRROR = os.environ.get("FLEET_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# Pre-installed in the cached base, so `apt-get -f install` after `dpkg -i` has nothing
# to fetch (dpkg -i still checks every Depends against what is there).
INCLUDE = ("python3", "python3-venv", "systemd", "init-system-helpers", "ca-certificates")
DEBOOTSTRAP_TIMEOUT_S = 1200


class ChrootUnavailableError(Exception):
    """The chroot cannot be made on this machine (the reason is the message)."""


def cache_tarball(today: dt.date | None = None) -> Path:
    day = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    return CACHE_DIR / f"{SUITE}-minbase-{day}.tar"


def ensure_base() -> Path:
    """The day's base tarball, made with debootstrap when missing."""
    tarball = cache_tarball()
    if tarball.exists():
        return tarball
    if os.geteuid() != 0:
        raise ChrootUnavailableError("needs root (debootstrap, chroot)")
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise ChrootUnavailableError("debootstrap is not installed (apt-get install debootstrap)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="build-") as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=DEBOOTSTRAP_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise ChrootUnavailableError(
                f"debootstrap {SUITE} from {MIRROR} failed (mirror unreachable?): "
                + " | ".join(tail)
            )
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True
        )
        partial.rename(tarball)
    for old in CACHE_DIR.glob(f"{SUITE}-minbase-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
    return tarball


@contextmanager
def fresh_chroot() -> Iterator[Path]:
    """A private copy of the day's bookworm base, with /proc mounted; removed after."""
    tarball = ensure_base()
    with tempfile.TemporaryDirectory(prefix="fleet-chroot-") as tmp:
        root = Path(tmp)
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)], check=True)
        proc_dir = root / "proc"
        mounted = (
            subprocess.run(
                ["mount", "-t", "proc", "proc", str(proc_dir)], capture_output=True, check=False
            ).returncode
            == 0
        )
        try:
            yield root
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(proc_dir)], check=False)


def run_in(root: Path, *argv: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command inside the chroot (a clean environment, as dpkg would see it)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        ["chroot", str(root), *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


if __name__ == "__main__":
    try:
        print(ensure_base())
    except ChrootUnavailableError as err:
        print(f"debchroot: {err}", file=sys.stderr)
        sys.exit(1)
