"""The agent's configuration (:class:`AgentConfig`, built from the settings tree by
:mod:`firmware_agent.run_cli`, or by a test) and its counters (:class:`AgentCounts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from firmware_agent.errors import ConfigError
from firmware_agent.feedback import FeedbackSettings
from firmware_agent.gnss.reader import ReaderConfig
from firmware_agent.scan.serial_reader import ScannerConfig
from firmware_agent.sources import (
    GnssSource,
    NmeaFile,
    ScanLog,
    ScannerSource,
    SerialGnss,
    SerialScan,
    inputs,
)
from firmware_agent.uplink.holdback import HoldLimits
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.van import VanConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    state_dir: Path
    uplink: UplinkConfig
    # The pipeline's own settings; a remote config overrides them while it runs.
    van: VanConfig = field(default_factory=VanConfig)
    # Where fixes come from (firmware_agent.sources): a serial receiver, a receiver on
    # TCP, an NMEA file. A bare ReaderConfig is a serial receiver (the older form).
    gnss: GnssSource | ReaderConfig | None = None
    # Scanners, several at once (a ring scanner and a handheld): serial, HID, scan logs.
    scanners: tuple[ScannerSource, ...] = ()
    # What the driver sees and hears after a scan: GPIO LEDs and buzzer, log, none.
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    # The older forms, mapped onto the sources above (sources()): one serial scanner,
    # an NMEA file played at `speed` (1.0 real time, 0 as fast as possible) with a
    # scan log merged in.
    scanner: ScannerConfig | None = None
    nmea_file: Path | None = None
    scans_file: Path | None = None
    speed: float = 0.0
    outbox_budget_bytes: int = 100 * 1024 * 1024
    # What is held in memory while the outbox cannot store records (a full disk).
    hold: HoldLimits = field(default_factory=HoldLimits)
    # With file input: stop once the file is done and ingest acknowledged everything.
    exit_when_drained: bool = False
    # On-device ETAs; the model file, None for the one shipped in the package.
    eta: bool = True
    eta_model: Path | None = None
    # The fleet's public keys (PEM or JWK files) that sign models sent on the `model`
    # topic; none: every model downlink is refused.
    model_keys: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if (self.gnss is None) == (self.nmea_file is None):
            raise ConfigError("give exactly one GNSS input: a receiver or an NMEA file")
        if self.speed < 0:
            raise ConfigError(f"speed must be >= 0, got {self.speed}")

    def sources(self) -> tuple[GnssSource, tuple[ScannerSource, ...]]:
        """The fix source and the scan sources to run, the older fields mapped."""
        gnss = self.gnss
        if isinstance(gnss, ReaderConfig):
            gnss = SerialGnss(gnss)
        elif gnss is None:
            assert self.nmea_file is not None
            gnss = NmeaFile(self.nmea_file, speed=self.speed)
        scanners = self.scanners
        if self.scanner is not None:
            scanners += (SerialScan(self.scanner),)
        if self.scans_file is not None:
            scanners += (ScanLog(self.scans_file),)
        return inputs(gnss, scanners)


@dataclass
class AgentCounts:
    fixes: int = 0
    scans: int = 0
    records: dict[str, int] = field(default_factory=lambda: {"telemetry": 0, "events": 0, "pod": 0})
    manifests: int = 0
    # Manifest downlinks refused (invalid, another van's, geometry that cannot be built).
    manifests_refused: int = 0
    # Remote configs applied (a clear included), and refused (invalid or stale; the
    # stored one at start included).
    configs: int = 0
    configs_refused: int = 0
    # Model downlinks installed (a clear included), and refused.
    models: int = 0
    models_refused: int = 0
