"""A live panel for testers watching a playback: where the van is, what is sent.

:func:`render_status` is a pure function from a :class:`PlayProgress` to a rich
renderable (tested on its own); :class:`LiveView` shows it with ``rich.live`` on
stderr, so stdout stays free for the ``pty: ...`` line scripts wait for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from firmware_agent.contract.fix import FixMode
from firmware_agent.contract.geo import haversine_m
from firmware_agent.contract.times import format_utc
from simulator.playback import PlayProgress
from simulator.stops import Stop

_MODE_TEXT = {
    FixMode.UNKNOWN: "unknown",
    FixMode.NO_FIX: "[red]no fix[/]",
    FixMode.FIX_2D: "[yellow]2D[/]",
    FixMode.FIX_3D: "[green]3D[/]",
}


def _stop_text(stop: Stop | None, at: datetime | None, *, arriving: bool) -> str:
    if stop is None:
        return "-"
    text = f"{stop.id} ({stop.type.value})"
    if at is not None:
        when = stop.arrival if arriving else stop.departure
        seconds = (when - at).total_seconds()
        text += (
            f", {'arrives' if arriving else 'leaves'} in {seconds:.0f} s" if seconds >= 0 else ""
        )
    return text


def render_status(
    progress: PlayProgress,
    *,
    stops: Sequence[Stop] = (),
    sink_label: str = "",
    link_status: str = "",
) -> Panel:
    """The panel for one moment of a playback."""
    epoch = progress.epoch
    now = progress.time
    current = next((s for s in stops if now is not None and s.arrival <= now <= s.departure), None)
    if epoch is not None and epoch.stop_id is not None:
        current = next((s for s in stops if s.id == epoch.stop_id), current)
    upcoming = next((s for s in stops if now is not None and s.arrival > now), None)

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    fraction = progress.fraction
    done = f"{100 * fraction:.1f} %" if fraction is not None else f"{progress.index + 1} epochs"
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=1.0, completed=fraction or 0.0, width=40), done)
    table.add_row("progress", bar)
    table.add_row("sim time", format_utc(now) if now is not None else "-")
    table.add_row("offset", f"{progress.offset_s:.1f} s")
    if epoch is not None:
        table.add_row("true position", f"{epoch.lat:.6f}, {epoch.lon:.6f}")
        reported = "-"
        if epoch.reported_lat is not None and epoch.reported_lon is not None:
            error_m = haversine_m(epoch.lat, epoch.lon, epoch.reported_lat, epoch.reported_lon)
            reported = (
                f"{epoch.reported_lat:.6f}, {epoch.reported_lon:.6f}  (error {error_m:.1f} m)"
            )
        table.add_row("reported", reported)
        table.add_row("speed", f"{epoch.speed_mps * 3.6:.1f} km/h, course {epoch.course_deg:.0f}°")
        hdop = f"{epoch.hdop:.2f}" if epoch.hdop is not None else "-"
        table.add_row("fix", f"{_MODE_TEXT[epoch.mode]}, HDOP {hdop}, {epoch.sats_used} satellites")
        flags = [
            name for name, on in (("outage", epoch.outage), ("multipath", epoch.multipath)) if on
        ]
        table.add_row("flags", "[bold red]" + ", ".join(flags) + "[/]" if flags else "-")
    table.add_row("current stop", _stop_text(current, now, arriving=False))
    table.add_row("next stop", _stop_text(upcoming, now, arriving=True))
    table.add_row(
        "bytes written", f"{progress.bytes_written:,} ({progress.dropped_bytes:,} dropped)"
    )
    if link_status:
        table.add_row("link", link_status)
    return Panel(table, title=f"fleet-sim {sink_label}".strip(), border_style="cyan")


class LiveView:
    """Shows :func:`render_status` live on stderr; feed it with :meth:`update`.

    Redrawing is throttled to ``min_interval_s`` of ``clock`` time, so an
    as-fast-as-possible playback is not slowed down by the panel.
    """

    def __init__(
        self,
        *,
        stops: Sequence[Stop] = (),
        sink_label: str = "",
        link_status: Callable[[], str] | None = None,
        console: Console | None = None,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stops = tuple(stops)
        self._sink_label = sink_label
        self._link_status = link_status
        self._console = console or Console(stderr=True)
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last_draw = -float("inf")
        self._latest: PlayProgress | None = None
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)

    def __enter__(self) -> Self:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._latest is not None:
            self._draw(self._latest)  # end on the final state, not the last throttled one
        self._live.stop()

    def update(self, progress: PlayProgress) -> None:
        self._latest = progress
        now = self._clock()
        if now - self._last_draw >= self._min_interval_s:
            self._last_draw = now
            self._draw(progress)

    def _draw(self, progress: PlayProgress) -> None:
        link = self._link_status() if self._link_status is not None else ""
        self._live.update(
            render_status(
                progress, stops=self._stops, sink_label=self._sink_label, link_status=link
            )
        )
