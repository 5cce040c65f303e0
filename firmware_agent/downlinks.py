"""A running van's manifest and config downlinks, and what it refused.

No downlink can brick the van: a manifest or config is validated (a manifest for
another device is refused), its geofence geometry built off the event loop (bounded:
:mod:`firmware_agent.geofence.index`), and only then stored and switched to. Anything
refused leaves the running manifest and config as they are, is logged with its reason
every time, and is kept for status health (:attr:`Downlinks.refused`: the last refusal
of each kind, its ``route_id`` or ``revision`` when known, ``reason``, ``at``).

Moved out of :mod:`firmware_agent.agent` (issue 14) with their bodies: the agent's
``_manifest_downlink`` (now :meth:`Downlinks.manifest`), ``_config``
(:meth:`Downlinks.config`), ``_config_index`` and ``_refuse`` (:meth:`Downlinks.refuse`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.times import format_utc
from firmware_agent.errors import RemoteConfigError
from firmware_agent.geofence import GeofenceIndex, build_index
from firmware_agent.manifest_store import ManifestRefusedError, ManifestStore, prepare_manifest
from firmware_agent.remote_config import (
    RemoteConfig,
    RemoteConfigStore,
    admit,
    apply_config,
    offered_revision,
    parse_config,
    running_revision,
)
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.van import VanConfig, VanPipeline

log = logging.getLogger(__name__)


class DownlinkCounts(Protocol):
    """Where downlinks are counted (the agent's counts)."""

    manifests: int
    manifests_refused: int
    configs: int
    configs_refused: int


class Downlinks:
    """The manifest and config downlinks of one van.

    ``van`` and ``uplink``: the agent's own settings, which a remote config overrides
    (and an empty one restores); ``clock``: the van's UTC now; ``announce``: called when
    the status health changes (the uplink re-publishes it).
    """

    def __init__(
        self,
        *,
        van: VanConfig,
        uplink: UplinkConfig,
        manifests: ManifestStore,
        config_store: RemoteConfigStore,
        counts: DownlinkCounts,
        clock: Callable[[], datetime],
        announce: Callable[[], None],
    ) -> None:
        self.van = van
        self.uplink_config = uplink
        self.manifests = manifests
        self.config_store = config_store
        self.counts = counts
        self.clock = clock
        self.announce = announce
        # The remote config running, None on the agent's own settings.
        self.remote_config: RemoteConfig | None = None
        # The last refused manifest and config, for status health.
        self.refused: dict[str, dict[str, Any]] = {}

    async def manifest(self, payload: bytes, pipeline: VanPipeline) -> None:
        """Adopt a manifest downlink: validate it, refuse another device's, build its
        geofence geometry off the event loop, store it, and only then switch the
        pipeline to it. Refused (:class:`CodecError`, which the uplink counts), keeping
        the running manifest, when any step fails; logged and in status health."""
        device_id = self.uplink_config.device_id
        try:
            prepared = await asyncio.to_thread(
                prepare_manifest,
                payload,
                device_id=device_id,
                geofence=pipeline.config.geofence,
                eta=pipeline.eta_tracker is not None,
            )
        except ManifestRefusedError as err:
            self.refuse("manifest", err.route_id, err.reason)
            raise CodecError(f"manifest refused, keeping the current one: {err}") from err
        manifest = prepared.manifest
        try:
            await asyncio.to_thread(self.manifests.save, prepared.data)
        except OSError as err:
            reason = f"cannot store it: {err.strerror or err}"
            self.refuse("manifest", manifest.route_id, reason)
            raise CodecError(f"manifest refused, keeping the current one: {reason}") from err
        pipeline.load_manifest(manifest, prepared.index, prepared.plan)
        self.counts.manifests += 1
        log.info("manifest %s adopted: %d stops", manifest.route_id, len(manifest.stops))
        self.announce()  # manifest_route_id is in the status health

    async def config(self, payload: bytes, pipeline: VanPipeline, uplink: Uplink) -> None:
        """Apply a config downlink to the running pipeline and uplink, and store it.

        Refused (:class:`RemoteConfigError`, which the uplink counts and logs once per
        kind), keeping the running config: an invalid payload, a revision not above the
        running one, settings the agent cannot take. The running config offered again
        (the retained copy, at every reconnect) is no error and changes nothing. The
        new settings replace the running ones only once stored, so a restart runs what
        the van last reported.
        """
        running = self.remote_config
        offered: RemoteConfig | None = None
        try:
            offered = parse_config(payload)
            if not admit(running, offered):
                log.debug("config revision %d again: already running", running_revision(running))
                return
            van, uplink_config = apply_config(offered, van=self.van, uplink=self.uplink_config)
            # The geofence geometry under the new settings, off the event loop: only a
            # config the van can run is stored.
            index = await self._config_index(van, pipeline)
        except RemoteConfigError as err:
            revision = offered_revision(payload) if offered is None else offered.revision
            self.refuse("config", revision, str(err))
            raise
        if offered is None:
            await asyncio.to_thread(self.config_store.clear)
        else:
            await asyncio.to_thread(self.config_store.save, offered)
        pipeline.reconfigure(van, index)
        # The uplink reads its batching settings per batch; nothing else of it changes.
        uplink.config = uplink_config
        self.remote_config = offered
        self.counts.configs += 1
        uplink.announce()  # the dispatcher sees the revision now, not at reconnect
        if offered is None:
            log.info("config cleared: running on defaults")
        else:
            log.info(
                "config revision %d applied%s",
                offered.revision,
                f" (ignored: {', '.join(offered.ignored)})" if offered.ignored else "",
            )

    async def _config_index(self, van: VanConfig, pipeline: VanPipeline) -> GeofenceIndex:
        """The running manifest's geofence geometry under ``van``'s settings, built off
        the event loop; :class:`RemoteConfigError` (``geofence``) if it cannot be."""
        try:
            return await asyncio.to_thread(build_index, pipeline.manifest, van.geofence)
        except Exception as err:  # MemoryError, a bug: the van keeps its settings
            raise RemoteConfigError(
                "geofence", f"cannot index the running manifest: {err!r}"
            ) from err

    def refuse(self, kind: str, what: str | int | None, reason: str) -> None:
        """A refused ``manifest`` or ``config`` (``what``: its route_id or revision, if
        known): logged with its reason every time, kept for status health, announced."""
        if kind == "manifest":
            self.counts.manifests_refused += 1
            key, name = "route_id", f"manifest {what!r}"
        else:
            self.counts.configs_refused += 1
            key, name = "revision", f"config revision {what}"
        log.warning("%s refused: %s", kind if what is None else name, reason)
        self.refused[kind] = {key: what, "reason": reason[:500], "at": format_utc(self.clock())}
        self.announce()
