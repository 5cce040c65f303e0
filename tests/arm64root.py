"""An arm64 root with Debian 12's Python runtime, for running the arm64 package's code
under qemu-user on this amd64 machine (``qemu-aarch64-static -L ROOT``).

Nothing is installed or run inside it: the runtime's packages (python3.11-minimal and
libpython3.11-stdlib with the libraries they link) are fetched with ``apt-get download``
for arm64 (cached under ``/var/cache/fleet-test-chroot/arm64-debs``) and unpacked with
``dpkg-deb -x``; the package under test is unpacked into the same root. Needs root (apt),
arm64 as a dpkg foreign architecture (packaging/build-deb.sh's cross build adds it) and
qemu-user-static (``./run test`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.debchroot import CACHE_DIR

QEMU = "qemu-aarch64-static"
# python3.11-minimal and libpython3.11-stdlib:arm64 with what they link (apt-cache
# depends --recurse, less what an unpacked root does not need: dpkg, perl, tar, ...).
RUNTIME = (
    "gcc-12-base", "libbz2-1.0", "libc6", "libcom-err2", "libcrypt1", "libdb5.3",
    "libexpat1", "libffi8", "libgcc-s1", "libgssapi-krb5-2", "libk5crypto3", "libkeyutils1",
    "libkrb5-3", "libkrb5support0", "liblzma5", "libncursesw6", "libnsl2",
    "libpython3.11-minimal", "libpython3.11-stdlib", "libreadline8", "libsqlite3-0",
    "libssl3", "libstdc++6", "libtinfo6", "libtirpc3", "libuuid1", "python3.11-minimal",
    "zlib1g",
)  # fmt: skip


class Arm64UnavailableError(RuntimeError):
    """What is missing to run arm64 code here."""


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd, check=False)


def ensure_qemu() -> str:
    """The path of qemu-aarch64-static (``./run test`` installs it, as root)."""
    found = shutil.which(QEMU)
    if found is None:
        raise Arm64UnavailableError(
            f"{QEMU} is not installed: run the tests with ./run test as root, or "
            "apt-get install qemu-user-static"
        )
    return found


def unpack_runtime(root: Path) -> Path:
    """Unpack the arm64 Python runtime into ``root``; ``root``."""
    debs = CACHE_DIR / "arm64-debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_", 1)[0] for p in debs.glob("*_arm64.deb")}
    missing = [f"{name}:arm64" for name in RUNTIME if name not in have]
    if missing:
        fetched = _run("apt-get", "download", *missing, cwd=debs)
        if fetched.returncode != 0:
            why = fetched.stderr[-1000:]
            raise Arm64UnavailableError(f"apt-get download (arm64) failed: {why}")
    root.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*_arm64.deb")):
        unpacked = _run("dpkg-deb", "-x", str(deb), str(root))
        if unpacked.returncode != 0:
            raise Arm64UnavailableError(f"dpkg-deb -x {deb.name}: {unpacked.stderr}")
    return root
