"""The simulator's exception tree.

Every error the simulator raises on purpose derives from :class:`SimulatorError`.
Specific errors also derive from the builtin they resemble, so callers may catch
either (the gpiozero idiom): a bad route file is a ``ValueError``, a pty that cannot
be created is an ``OSError``. Third-party errors (gpxpy, json, csv) are translated at
the boundary with ``raise ... from err``.
"""

from __future__ import annotations

from pathlib import Path


class SimulatorError(Exception):
    """Root of every error raised by :mod:`simulator`."""


class ConfigError(SimulatorError, ValueError):
    """A scenario or playback setting is missing, malformed or out of range."""


class InputFileError(SimulatorError, ValueError):
    """An input file is unreadable or malformed.

    ``path`` names the file and ``line`` the 1-based line at fault when one is known,
    so that the message a tester sees points at the row to fix.
    """

    def __init__(self, path: Path | str, message: str, *, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}" if line is None else f"{self.path} line {line}"
        super().__init__(f"{where}: {message}")


class RouteFileError(InputFileError):
    """A GeoJSON or GPX route file cannot be used as a route."""


class TraceFileError(InputFileError):
    """A position CSV (``timestamp_utc,lat,lon``) is malformed, unsorted or too short."""


class TruthFileError(InputFileError):
    """A ground-truth file (``truth.csv``, ``stops.json``, ``scenario.json``) is malformed."""


class NmeaLogError(InputFileError):
    """A recorded NMEA log cannot be replayed (unreadable, or no timed sentence at all)."""


class ScanLogError(InputFileError):
    """A scan log (``scans.jsonl``) is unreadable or malformed."""


class ReceiverError(SimulatorError, OSError):
    """A fake receiver (pty, TCP server, file) could not be set up or used."""
