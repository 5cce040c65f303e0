"""The van's current manifest on disk (``manifest.json`` in the state directory)."""

from __future__ import annotations

import os
from pathlib import Path

from firmware_agent.contract.manifest import Manifest, load_manifest, loads_manifest


class ManifestStore:
    """The current manifest on disk (``manifest.json`` in the agent's state directory).

    :meth:`replace` validates first, then writes a temporary file, fsyncs it and renames
    it over the old one, so a power cut leaves either the old or the new manifest, never
    a torn one. An invalid manifest is refused and the current one stays.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Manifest | None:
        """The stored manifest, or None when there is none yet."""
        if not self.path.exists():
            return None
        return load_manifest(self.path)

    def replace(self, data: bytes) -> Manifest:
        manifest = loads_manifest(data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return manifest
