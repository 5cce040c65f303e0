"""A copy of the project's sources to build or pip-install from.

setuptools builds in the source tree (``build/``, ``*.egg-info``): a build straight from
the checkout races any other build there and any file that comes and goes while it
copies. Tests that install the project build from a snapshot instead, as
packaging/build-deb.sh does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__")


def snapshot_sources(dest: Path) -> Path:
    """Copy the checkout's files (tracked and untracked, not ignored) into ``dest``."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout: everything but the build leftovers
        shutil.copytree(ROOT, dest, ignore=IGNORED)
        return dest
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if not name or not source.is_file():  # deleted in the work tree, or a submodule
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest
