"""The testers' live panel shows where the van is and what the link is doing."""

from __future__ import annotations

import io
from datetime import timedelta

from rich.console import Console

from simulator.live import LiveView, render_status
from simulator.playback import PlayProgress
from simulator.scenario import ScenarioConfig, generate


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(renderable)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_panel_shows_progress_position_stops_and_link() -> None:
    scenario = generate(ScenarioConfig(seed=4, n_stops=3))
    first = scenario.stops[0]
    epoch = next(e for e in scenario.epochs() if e.time >= first.arrival + timedelta(seconds=5))
    index = round((epoch.time - scenario.start).total_seconds())
    progress = PlayProgress(
        index=index,
        total=scenario.n_epochs,
        offset_s=float(index),
        time=epoch.time,
        epoch=epoch,
        bytes_written=123_456,
        dropped_bytes=7,
    )
    text = _text(
        render_status(
            progress,
            stops=scenario.stops,
            sink_label="pty: /dev/pts/9",
            link_status="reader attached",
        )
    )
    assert f"{100 * (index + 1) / scenario.n_epochs:.1f} %" in text
    assert f"{epoch.lat:.6f}, {epoch.lon:.6f}" in text
    assert f"{first.id} ({first.type.value}), leaves in" in text
    assert f"{scenario.stops[1].id} ({scenario.stops[1].type.value}), arrives in" in text
    assert "123,456 (7 dropped)" in text
    assert "reader attached" in text
    assert "pty: /dev/pts/9" in text
    assert "0.0 km/h" in text


def test_panel_without_epoch_information_still_shows_time_and_bytes() -> None:
    progress = PlayProgress(
        index=9, total=None, offset_s=9.0, time=None, epoch=None, bytes_written=10, dropped_bytes=0
    )
    text = _text(render_status(progress))
    assert "10 epochs" in text
    assert "9.0 s" in text


def test_live_view_throttles_redraws_and_ends_on_the_last_state() -> None:
    clock_s = [0.0]
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None, force_terminal=False)
    view = LiveView(console=console, min_interval_s=1.0, clock=lambda: clock_s[0])
    drawn: list[int] = []
    original = view._draw

    def spy(progress: PlayProgress) -> None:
        drawn.append(progress.index)
        original(progress)

    view._draw = spy  # type: ignore[method-assign]
    with view:
        for index in range(10):
            clock_s[0] = index * 0.25
            view.update(PlayProgress(index, 10, float(index), None, None, index * 10, 0))
    assert drawn == [0, 4, 8, 9]
    assert "100.0 %" in out.getvalue()
