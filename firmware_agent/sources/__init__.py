"""The agent's inputs and clock behind small interfaces, chosen by configuration
(as gpiozero's pin factories are): real hardware, simulated and file implementations.

- :mod:`.fix`: :class:`FixSource` (:class:`SerialGnss`, :class:`TcpGnss`,
  :class:`NmeaFile`);
- :mod:`.scans`: :class:`ScanSource` (:class:`SerialScan`, :class:`HidScan`,
  :class:`ScanLog`), several at once;
- :mod:`.clock`: :class:`Clock` (:class:`GnssClock`, :class:`SystemClock`,
  :class:`SimClock`).

Driver feedback (LEDs and buzzer, a log sink, none) is :mod:`firmware_agent.feedback`.
"""

from __future__ import annotations

from dataclasses import replace

from firmware_agent.sources.clock import Clock, GnssClock, SimClock, SystemClock
from firmware_agent.sources.fix import FixSource, NmeaFile, SerialGnss, TcpGnss
from firmware_agent.sources.scans import HidScan, ScanLog, ScanSource, SerialScan

GnssSource = SerialGnss | TcpGnss | NmeaFile
ScannerSource = SerialScan | HidScan | ScanLog

__all__ = [
    "Clock",
    "FixSource",
    "GnssClock",
    "GnssSource",
    "HidScan",
    "NmeaFile",
    "ScanLog",
    "ScanSource",
    "ScannerSource",
    "SerialGnss",
    "SerialScan",
    "SimClock",
    "SystemClock",
    "TcpGnss",
    "default_clock",
    "inputs",
]


def inputs(
    gnss: GnssSource, scanners: tuple[ScannerSource, ...]
) -> tuple[GnssSource, tuple[ScannerSource, ...]]:
    """The sources to run: beside an NMEA file, scan logs are merged into the file by
    time (as replay does) rather than played against the clock; the others run as
    they are."""
    if not isinstance(gnss, NmeaFile):
        return gnss, scanners
    logs = tuple(s.path for s in scanners if isinstance(s, ScanLog))
    rest = tuple(s for s in scanners if not isinstance(s, ScanLog))
    return replace(gnss, scans=gnss.scans + logs), rest


def default_clock(gnss: GnssSource) -> Clock:
    """A receiver's clock follows GNSS time when the system clock is off; a file's is
    the system clock (a day played fast must not date its records in the file's past)."""
    return GnssClock() if gnss.live else SystemClock()
