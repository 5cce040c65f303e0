"""Driver feedback on gpiozero's MockFactory: the pin histories of every signal.

MockFactory pins record each state change with the time since the previous one
(``pin.states``); the patterns are asserted on those, the way gpiozero's own tests
assert its blink(). Patterns play on a worker thread: ``wait_idle`` waits for the end
of one deterministically instead of sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Iterator

import gpiozero  # type: ignore[import-untyped]
import pytest
from gpiozero.pins.mock import MockFactory, MockPin  # type: ignore[import-untyped]

from firmware_agent.errors import ConfigError, DeviceError
from firmware_agent.feedback import (
    PATTERNS,
    DriverFeedback,
    FeedbackPins,
    NullFeedback,
    Signal,
)

PINS = FeedbackPins()  # green 17, red 27, buzzer 22
F, T = False, True


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    mock = MockFactory()
    yield mock
    mock.close()


def pins(factory: MockFactory) -> tuple[MockPin, MockPin, MockPin]:
    return factory.pin(17), factory.pin(27), factory.pin(22)


def states(pin: MockPin) -> list[bool]:
    return [s.state for s in pin.states]


def play(factory: MockFactory, s: Signal) -> tuple[list[bool], list[bool], list[bool]]:
    with DriverFeedback(PINS, pin_factory=factory) as feedback:
        feedback.signal(s)
        assert feedback.wait_idle(timeout_s=3.0)
        green, red, buzzer = pins(factory)
        return states(green), states(red), states(buzzer)


def test_recorded_is_green_for_0_3_s_and_one_short_beep(factory: MockFactory) -> None:
    assert play(factory, Signal.RECORDED) == ([F, T, F], [F], [F, T, F])
    green, _, buzzer = pins(factory)
    green.assert_states_and_times([(0.0, F), (0.0, T), (0.3, F)])
    buzzer.assert_states_and_times([(0.0, F), (0.0, T), (0.1, F)])


def test_wrong_stop_is_three_red_blinks_with_three_beeps(factory: MockFactory) -> None:
    blinks = [F, T, F, T, F, T, F]
    assert play(factory, Signal.WRONG_STOP) == ([F], blinks, blinks)
    _, red, buzzer = pins(factory)
    times = [(0.0, F), (0.0, T)] + [(0.15, F), (0.15, T)] * 2 + [(0.15, F)]
    red.assert_states_and_times(times)
    buzzer.assert_states_and_times(times)


def test_unknown_code_is_red_for_1_s_and_one_long_beep(factory: MockFactory) -> None:
    assert play(factory, Signal.UNKNOWN_CODE) == ([F], [F, T, F], [F, T, F])
    _, red, buzzer = pins(factory)
    red.assert_states_and_times([(0.0, F), (0.0, T), (1.0, F)])
    buzzer.assert_states_and_times([(0.0, F), (0.0, T), (0.6, F)])


def test_no_fix_alternates_green_and_red_twice_silently(factory: MockFactory) -> None:
    assert play(factory, Signal.NO_FIX) == ([F, T, F, T, F], [F, T, F, T, F], [F])
    green, red, _ = pins(factory)
    green.assert_states_and_times([(0.0, F), (0.0, T), (0.25, F), (0.25, T), (0.25, F)])
    red.assert_states_and_times([(0.0, F), (0.25, T), (0.25, F), (0.25, T), (0.25, F)])
    # Alternating, never both on: the "amber" is in the eye, not on the pins.
    for g_frame in PATTERNS[Signal.NO_FIX]:
        assert not (g_frame.green and g_frame.red)


def test_every_pattern_is_distinguishable() -> None:
    # By what a driver perceives: which outputs, how many pulses, how long each is on.
    def perceived(s: Signal) -> tuple[tuple[int, float], ...]:
        frames = PATTERNS[s]
        out = []
        for output in ("green", "red", "buzzer"):
            on = [f.duration_s for f in frames if getattr(f, output)]
            pulses = sum(
                1
                for i, f in enumerate(frames)
                if getattr(f, output) and (i == 0 or not getattr(frames[i - 1], output))
            )
            out.append((pulses, round(sum(on), 3)))
        return tuple(out)

    perceptions = {s: perceived(s) for s in Signal}
    assert len(set(perceptions.values())) == len(Signal)
    assert perceptions[Signal.NO_FIX][2] == (0, 0)  # silent
    assert all(sum(f.duration_s for f in PATTERNS[s]) <= 1.2 for s in Signal)


def test_a_new_signal_interrupts_the_pattern_playing(factory: MockFactory) -> None:
    with DriverFeedback(PINS, pin_factory=factory) as feedback:
        feedback.signal(Signal.UNKNOWN_CODE)
        time.sleep(0.1)  # into the 1 s red
        feedback.signal(Signal.RECORDED)
        assert feedback.wait_idle(timeout_s=3.0)
        green, red, buzzer = pins(factory)
        assert states(red) == [F, T, F]
        assert red.states[-1].timestamp < 0.3  # cut short, not its full second
        assert states(green) == [F, T, F]
        assert green.states[-1].timestamp == pytest.approx(0.3, abs=0.05)  # in full
        # The long beep was cut too, then the short one played.
        assert states(buzzer) == [F, T, F, T, F]
        assert buzzer.states[-1].timestamp == pytest.approx(0.1, abs=0.05)


def test_only_the_newest_of_queued_signals_plays(factory: MockFactory) -> None:
    with DriverFeedback(PINS, pin_factory=factory) as feedback:
        for s in (Signal.WRONG_STOP, Signal.NO_FIX, Signal.UNKNOWN_CODE, Signal.RECORDED):
            feedback.signal(s)
        assert feedback.wait_idle(timeout_s=3.0)
        green, red, _ = pins(factory)
        assert states(green)[-2:] == [T, F]
        assert green.states[-1].timestamp == pytest.approx(0.3, abs=0.05)
        # Whatever of the superseded patterns started, it was cut within a frame.
        assert all(s.timestamp < 0.2 for s in red.states[1:])


def test_signal_never_blocks_the_event_loop(factory: MockFactory, no_blocking: object) -> None:
    # Under blockbuster: a lock taken while the worker holds it would fail the test.
    with DriverFeedback(PINS, pin_factory=factory) as feedback:

        async def drive() -> None:
            for i in range(100):
                feedback.signal(list(Signal)[i % 4])
                await asyncio.sleep(0.001)
            feedback.signal(Signal.RECORDED)

        asyncio.run(drive())
        assert feedback.wait_idle(timeout_s=3.0)


def test_close_turns_everything_off_and_releases_the_pins(factory: MockFactory) -> None:
    feedback = DriverFeedback(PINS, pin_factory=factory)
    feedback.signal(Signal.UNKNOWN_CODE)
    time.sleep(0.05)
    feedback.close()
    feedback.close()  # idempotent
    feedback.signal(Signal.RECORDED)  # after close: nothing, and nothing to wait for
    assert feedback.wait_idle(timeout_s=0)
    green, red, buzzer = pins(factory)
    assert (red.state, buzzer.state, green.state) == (F, F, F)
    assert red.states[-1].timestamp < 0.5
    # Released: the pins can be claimed again.
    gpiozero.LED(27, pin_factory=factory).close()


def test_absent_outputs_are_skipped(factory: MockFactory) -> None:
    with DriverFeedback(FeedbackPins(buzzer=None), pin_factory=factory) as feedback:
        feedback.signal(Signal.RECORDED)
        assert feedback.wait_idle(timeout_s=3.0)
    assert states(factory.pin(17)) == [F, T, F]
    assert len(factory.pins) == 2  # GPIO22 never claimed


def test_pins_by_name(factory: MockFactory) -> None:
    with DriverFeedback(FeedbackPins("BOARD13", "GPIO5", "GPIO6"), pin_factory=factory) as fb:
        fb.signal(Signal.RECORDED)
        assert fb.wait_idle(timeout_s=3.0)
    assert states(factory.pin(27)) == [F, T, F]  # BOARD13 is GPIO27
    assert states(factory.pin(6)) == [F, T, F]


def test_an_invalid_pin_is_a_config_error(factory: MockFactory) -> None:
    with pytest.raises(ConfigError, match="99"):
        DriverFeedback(FeedbackPins(red_led=99), pin_factory=factory)
    # The green LED made before the failure was released.
    gpiozero.LED(17, pin_factory=factory).close()


def test_a_pin_in_use_is_a_device_error(factory: MockFactory) -> None:
    with gpiozero.LED(22, pin_factory=factory), pytest.raises(DeviceError, match="22"):
        DriverFeedback(PINS, pin_factory=factory)


def test_create_without_any_pin_factory_gives_null_feedback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # gpiozero picks its factory from this variable; an unknown one fails as a laptop
    # without GPIO libraries does, with BadPinFactory.
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    with caplog.at_level(logging.WARNING, logger="firmware_agent.feedback"):
        feedback = DriverFeedback.create(PINS)
    assert isinstance(feedback, NullFeedback)
    assert len(caplog.records) == 1
    assert "no-such-factory" in caplog.records[0].getMessage()


def test_create_on_this_machines_default_factory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    with (
        caplog.at_level(logging.WARNING, logger="firmware_agent.feedback"),
        warnings.catch_warnings(record=True) as python_warnings,
    ):
        warnings.simplefilter("always")
        feedback = DriverFeedback.create(PINS)
    with feedback:
        if isinstance(feedback, DriverFeedback):
            pytest.skip("this machine has GPIO: the fallback cannot be shown here")
        # One warning of ours, none of gpiozero's four "falling back from ..." ones.
        assert len(caplog.records) == 1
        assert not [w for w in python_warnings if issubclass(w.category, gpiozero.PinWarning)]


def test_create_with_a_factory_gives_driver_feedback(factory: MockFactory) -> None:
    with DriverFeedback.create(PINS, pin_factory=factory) as feedback:
        assert isinstance(feedback, DriverFeedback)


def test_null_feedback_has_the_same_interface() -> None:
    with NullFeedback() as feedback:
        for s in Signal:
            feedback.signal(s)
        assert feedback.wait_idle(timeout_s=0)
    public = {n for n in dir(DriverFeedback) if not n.startswith("_")} - {"create"}
    assert public <= {n for n in dir(NullFeedback) if not n.startswith("_")}
