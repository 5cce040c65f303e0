"""The van's current manifest on disk (``manifest.json`` in the state directory), and a
manifest downlink made ready to run before anything is stored or switched."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from firmware_agent.contract.eta_features import RoutePlan
from firmware_agent.contract.manifest import (
    Manifest,
    ManifestError,
    decode_manifest,
    inflate_manifest,
    load_manifest,
    loads_manifest,
    parse_manifest,
)
from firmware_agent.geofence import GeofenceConfig, GeofenceIndex, build_index


def check_device(manifest: Manifest, device_id: str) -> None:
    """:class:`ManifestError` (``device_id``) unless ``manifest`` is for ``device_id``.

    A van runs only its own day: another van's manifest (a dispatcher's mix-up, a copy
    on the wrong topic) would have it confirm the other van's stops and sign PODs for
    the other van's parcels.
    """
    if manifest.device_id != device_id:
        raise ManifestError(
            "device_id", f"is {manifest.device_id[:100]!r}, not this van's {device_id!r}"
        )


class ManifestRefusedError(Exception):
    """A manifest downlink the van will not run: ``reason`` says why, ``route_id`` is
    its route id when it had a readable one."""

    def __init__(self, reason: str, route_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.route_id = route_id


@dataclass(frozen=True, slots=True)
class PreparedManifest:
    """A manifest ready to switch to: validated, for this van, its geofence geometry
    and (if asked for) its ETA route plan built; ``data`` is its JSON, to store
    (inflated, if it came gzip-compressed)."""

    manifest: Manifest
    data: bytes
    index: GeofenceIndex
    plan: RoutePlan | None


def prepare_manifest(
    payload: bytes, *, device_id: str, geofence: GeofenceConfig, eta: bool = False
) -> PreparedManifest:
    """Everything a manifest downlink needs before the van may store and run it
    (``eta``: the ETA route plan too).

    Blocking and CPU-bound (inflate, parse, index; bounded by the contract's limits and
    the grids' budget): call it off the event loop. :class:`ManifestRefusedError` for a
    payload the van refuses: invalid, another van's, or geometry that could not be
    built (a MemoryError, a bug: whatever it is, the van keeps its running day).
    """
    try:
        data = inflate_manifest(payload)
        doc = decode_manifest(data)
    except ManifestError as err:
        raise ManifestRefusedError(str(err)) from err
    try:
        manifest = parse_manifest(doc)
    except ManifestError as err:
        route_id = doc.get("route_id") if isinstance(doc, dict) else None
        raise ManifestRefusedError(
            str(err), route_id[:200] if isinstance(route_id, str) else None
        ) from err
    try:
        check_device(manifest, device_id)
    except ManifestError as err:
        raise ManifestRefusedError(str(err), manifest.route_id) from err
    try:
        index = build_index(manifest, geofence)
        plan = RoutePlan.from_manifest(manifest) if eta else None
    except Exception as err:  # see above
        raise ManifestRefusedError(
            f"cannot index its geometry: {err!r}", manifest.route_id
        ) from err
    return PreparedManifest(manifest, data, index, plan)


class ManifestStore:
    """The current manifest on disk (``manifest.json`` in the agent's state directory).

    :meth:`replace` validates first, then writes a temporary file, fsyncs it and renames
    it over the old one, so a power cut leaves either the old or the new manifest, never
    a torn one. An invalid manifest is refused and the current one stays. :meth:`save`
    writes what was validated already (:func:`prepare_manifest`).
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
        self.save(inflate_manifest(data))
        return manifest

    def save(self, data: bytes) -> None:
        """Durably replace the stored manifest with ``data`` (validated JSON)."""
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
