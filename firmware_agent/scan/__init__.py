"""Parcel scanning: scanners (serial, HID) to :class:`Scan`, labels to :class:`ParcelCode`.

The pieces, each in its own module: :mod:`.types` (:class:`Scan`), :mod:`.codes`
(parsing labels, canonical codes), :mod:`.dedup` (double scans), :mod:`.log` (the
SCANS file), :mod:`.serial_reader` and :mod:`.hid_reader` (the devices), :mod:`.cli`.
Only the pure parts are re-exported here: importing the package must not pull in
pyserial or evdev.
"""

from firmware_agent.scan.codes import (
    CodeKind,
    ParcelCode,
    ScanParseError,
    canonical_code,
    parse_scan,
)
from firmware_agent.scan.dedup import ScanDeduplicator
from firmware_agent.scan.types import Scan

__all__ = [
    "CodeKind",
    "ParcelCode",
    "Scan",
    "ScanDeduplicator",
    "ScanParseError",
    "canonical_code",
    "parse_scan",
]
