"""GNSS receiver simulator for the fleet gateway: scenarios, fake receivers, truth.

The pieces a test or a benchmark usually needs::

    from simulator import ScenarioConfig, generate, render_epoch, PtyReceiver, play

- :func:`generate` turns a :class:`ScenarioConfig` into a :class:`Scenario` whose
  :meth:`~Scenario.epochs` are the receiver's view of a delivery day;
- :func:`render_epoch` writes an epoch as NMEA sentences;
- :class:`PtyReceiver`, :class:`TcpReceiver` and :class:`FileSink` are where bytes go,
  :func:`play` paces them there;
- :func:`write_scenario_dir` / :func:`load_truth` store and read back the ground truth;
- :func:`build_manifest` and :func:`build_scan_log` give the day's manifest and the
  driver's scans; :class:`PtyScanner` is a serial barcode scanner on a pty;
- :func:`trace_epochs` replays a real position CSV; :func:`write_trip_dir` turns one
  into a replayable day with its halts as stops.

Module map: ``town`` (generated street network), ``route`` (GeoJSON/GPX routes),
``kinematics`` (speed profile), ``gnss_errors`` (receiver error model), ``sky``
(satellites in view), ``scenario`` (the day), ``nmea_writer``, ``truth``,
``manifest``, ``labels`` (parcel codes, scanner renderings), ``scans`` (scan logs),
``scenario_dir``, ``receiver``, ``scanner``, ``playback``, ``trace``, ``trips``,
``live`` (rich panel), ``eta_days`` (days for ETA training), ``demo``, ``cli``. See
docs/simulator.md.
"""

from simulator.epoch import Epoch, Satellite
from simulator.errors import SimulatorError
from simulator.manifest import build_manifest
from simulator.nmea_writer import render_epoch
from simulator.playback import TimedChunk, epoch_chunks, nmea_log_chunks, play
from simulator.receiver import FileSink, PtyReceiver, TcpReceiver
from simulator.scanner import PtyScanner
from simulator.scans import build_scan_log
from simulator.scenario import Scenario, ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir
from simulator.stops import Stop, StopType
from simulator.trace import read_trace_csv, trace_epochs
from simulator.trips import write_trip_dir
from simulator.truth import load_truth

__all__ = [
    "Epoch",
    "FileSink",
    "PtyReceiver",
    "PtyScanner",
    "Satellite",
    "Scenario",
    "ScenarioConfig",
    "SimulatorError",
    "Stop",
    "StopType",
    "TcpReceiver",
    "TimedChunk",
    "build_manifest",
    "build_scan_log",
    "epoch_chunks",
    "generate",
    "load_truth",
    "nmea_log_chunks",
    "play",
    "read_trace_csv",
    "render_epoch",
    "trace_epochs",
    "write_scenario_dir",
    "write_trip_dir",
]
