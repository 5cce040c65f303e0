"""GNSS receiver simulator for the fleet gateway: scenarios, fake receivers, truth.

The pieces a test or a benchmark usually needs::

    from simulator import ScenarioConfig, generate, render_epoch, PtyReceiver, play

- :func:`generate` turns a :class:`ScenarioConfig` into a :class:`Scenario` whose
  :meth:`~Scenario.epochs` are the receiver's view of a delivery day;
- :func:`render_epoch` writes an epoch as NMEA sentences;
- :class:`PtyReceiver`, :class:`TcpReceiver` and :class:`FileSink` are where bytes go,
  :func:`play` paces them there;
- :func:`write_scenario_dir` / :func:`load_truth` store and read back the ground truth;
- :func:`trace_epochs` replays a real position CSV.

Module map: ``town`` (generated street network), ``route`` (GeoJSON/GPX routes),
``kinematics`` (speed profile), ``gnss_errors`` (receiver error model), ``sky``
(satellites in view), ``scenario`` (the day), ``nmea_writer``, ``truth``,
``scenario_dir``, ``receiver``, ``playback``, ``trace``, ``live`` (rich panel), ``cli``.
"""

from simulator.epoch import Epoch, Satellite
from simulator.errors import SimulatorError
from simulator.nmea_writer import render_epoch
from simulator.playback import TimedChunk, epoch_chunks, nmea_log_chunks, play
from simulator.receiver import FileSink, PtyReceiver, TcpReceiver
from simulator.scenario import Scenario, ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir
from simulator.stops import Stop, StopType
from simulator.trace import read_trace_csv, trace_epochs
from simulator.truth import load_truth

__all__ = [
    "Epoch",
    "FileSink",
    "PtyReceiver",
    "Satellite",
    "Scenario",
    "ScenarioConfig",
    "SimulatorError",
    "Stop",
    "StopType",
    "TcpReceiver",
    "TimedChunk",
    "epoch_chunks",
    "generate",
    "load_truth",
    "nmea_log_chunks",
    "play",
    "read_trace_csv",
    "render_epoch",
    "trace_epochs",
    "write_scenario_dir",
]
