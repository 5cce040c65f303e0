"""What the driver sees and hears after a scan: LEDs and a buzzer on GPIO (gpiozero).

Drivers never look at a screen; each result of a scan has its own pattern, told apart
by colour, count and length even in a noisy cab with the sun on the LEDs
(docs/outcomes.md has the same table, with what the driver does next):

====================  ===========================================  =====================
signal                LEDs                                         buzzer
====================  ===========================================  =====================
``RECORDED``          green on 0.3 s                               one short beep, 0.1 s
``NO_FIX``            green and red alternate twice, 0.25 s each   silent
``FAILED_ATTEMPT``    green and red together (amber) 0.6 s         two short beeps
``REASON_NOTED``      amber flash, 0.15 s                          one click, 0.05 s
``DUPLICATE``         green flashes twice, 0.1 s each              one click, 0.05 s
``WRONG_STOP``        red blinks 3 times (0.15 s on, 0.15 s off)   3 beeps, with the red
``UNKNOWN_CODE``      red on 1 s                                   one long beep, 0.6 s
``UNREADABLE``        red blinks twice, 0.3 s each                 two short beeps
====================  ===========================================  =====================

Which result of the pipeline gives which signal is :func:`signal_for`, the one place
that decides it. With ``buzzer_muted`` the buzzer stays silent and the LEDs play as
ever (a driver who finds the beeps too much, a night round).

:class:`DriverFeedback` plays patterns on a worker thread, so :meth:`~DriverFeedback.signal`
never blocks the event loop (it takes no lock: a queue put). A new signal interrupts
the pattern playing, which is cut short with every output off. :class:`NullFeedback`
has the same interface and does nothing, for vans without GPIO (and laptops):
:meth:`DriverFeedback.create` falls back to it, with one warning, when gpiozero finds no
pin factory. :class:`LogFeedback` writes each signal to the log instead (a bench, the
simulator, a van whose LEDs are being fitted).

``fleet-agent run`` picks one with :class:`FeedbackSettings` (``kind``: ``gpio``,
``log`` or ``none``; the pins; ``buzzer_muted``: LEDs only) through
:func:`open_feedback`. gpiozero's own ``GPIOZERO_PIN_FACTORY`` environment variable
chooses its pin factory (``mock`` for tests). Test hook: with gpiozero's mock factory
and ``FLEET_TEST_PIN_HISTORY`` set to a file, :meth:`DriverFeedback.close` appends
every pin's state history there (one JSON line per pin: ``{"pin", "role", "states":
[[seconds since the previous change, state], ...]}``), so a test can assert what a
``fleet-agent run`` process did with its LEDs and buzzer.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Protocol, Self

import gpiozero  # type: ignore[import-untyped]  # gpiozero has no type hints
from gpiozero import BadPinFactory, GPIOPinInUse, GPIOZeroError, PinInvalidPin

from firmware_agent.errors import ConfigError, DeviceError, DeviceUnavailableError

_LOG = logging.getLogger(__name__)


class Signal(StrEnum):
    RECORDED = "recorded"
    WRONG_STOP = "wrong_stop"
    UNKNOWN_CODE = "unknown_code"
    NO_FIX = "no_fix"
    FAILED_ATTEMPT = "failed_attempt"
    REASON_NOTED = "reason_noted"
    DUPLICATE = "duplicate"
    UNREADABLE = "unreadable"


class ScanResult(StrEnum):
    """What the pipeline made of one scan (:class:`~firmware_agent.van.VanPipeline`)."""

    DELIVERED = "delivered"  # an attempt that is a delivery (delivered, safe place, neighbour)
    DELIVERED_NO_FIX = "delivered_no_fix"  # the same, without a fresh GNSS fix
    FAILED_ATTEMPT = "failed_attempt"  # an attempt recorded with a failure reason
    REASON_NOTED = "reason_noted"  # a reason card, armed for the next parcel
    DUPLICATE = "duplicate"  # the same code again within the window: nothing new
    ALREADY_DELIVERED = "already_delivered"  # a parcel delivered earlier: nothing new
    WRONG_STOP = "wrong_stop"  # a parcel of another stop
    UNKNOWN_PARCEL = "unknown_parcel"  # readable, but not on the manifest
    UNREADABLE = "unreadable"  # garbage, a bad check digit, a foreign reason card


_SIGNALS: Final[dict[ScanResult, Signal]] = {
    ScanResult.DELIVERED: Signal.RECORDED,
    ScanResult.DELIVERED_NO_FIX: Signal.NO_FIX,
    ScanResult.FAILED_ATTEMPT: Signal.FAILED_ATTEMPT,
    ScanResult.REASON_NOTED: Signal.REASON_NOTED,
    ScanResult.DUPLICATE: Signal.DUPLICATE,
    # Nothing new either: the parcel is in a POD already.
    ScanResult.ALREADY_DELIVERED: Signal.DUPLICATE,
    ScanResult.WRONG_STOP: Signal.WRONG_STOP,
    ScanResult.UNKNOWN_PARCEL: Signal.UNKNOWN_CODE,
    ScanResult.UNREADABLE: Signal.UNREADABLE,
}


def signal_for(result: ScanResult) -> Signal:
    """The signal the driver gets for ``result`` (the module doc's table)."""
    return _SIGNALS[ScanResult(result)]


@dataclass(frozen=True, slots=True)
class FeedbackPins:
    """GPIO pins (gpiozero names: ``17``, ``"GPIO17"``, ``"BOARD11"``); ``None``: not fitted."""

    green_led: int | str | None = 17
    red_led: int | str | None = 27
    buzzer: int | str | None = 22


@dataclass(frozen=True, slots=True)
class Frame:
    """One step of a pattern: these outputs on (the others off) for ``duration_s``."""

    green: bool
    red: bool
    buzzer: bool
    duration_s: float


def _frames(*steps: tuple[str, float]) -> tuple[Frame, ...]:
    # "gb" = green and buzzer on; "" = all off.
    return tuple(Frame("g" in on, "r" in on, "b" in on, duration_s) for on, duration_s in steps)


PATTERNS: Final[dict[Signal, tuple[Frame, ...]]] = {
    Signal.RECORDED: _frames(("gb", 0.1), ("g", 0.2)),
    Signal.WRONG_STOP: _frames(*[("rb", 0.15), ("", 0.15)] * 3),
    Signal.UNKNOWN_CODE: _frames(("rb", 0.6), ("r", 0.4)),
    Signal.NO_FIX: _frames(*[("g", 0.25), ("r", 0.25)] * 2),
    Signal.FAILED_ATTEMPT: _frames(("grb", 0.1), ("gr", 0.1), ("grb", 0.1), ("gr", 0.3)),
    Signal.REASON_NOTED: _frames(("grb", 0.05), ("gr", 0.1)),
    Signal.DUPLICATE: _frames(("gb", 0.05), ("g", 0.05), ("", 0.1), ("g", 0.1)),
    Signal.UNREADABLE: _frames(("rb", 0.1), ("r", 0.2), ("", 0.2), ("rb", 0.1), ("r", 0.2)),
}


class Feedback(Protocol):
    """What the pipeline calls; :class:`DriverFeedback` and :class:`NullFeedback`."""

    def signal(self, s: Signal) -> None: ...
    def wait_idle(self, timeout_s: float | None = None) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class NullFeedback:
    """Feedback for a van without LEDs or buzzer: every call does nothing."""

    def signal(self, s: Signal) -> None:
        pass

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_CLOSE: Final = object()


class DriverFeedback:
    """LEDs and buzzer on GPIO; see the module doc for the patterns.

    Construct it outside the event loop (opening GPIO touches files), or use
    :meth:`create`. ``pin_factory`` is gpiozero's (``MockFactory`` in tests); ``None``
    uses gpiozero's default. ``buzzer_muted``: the buzzer is held silent (its pin is
    still claimed, and kept off), the LEDs play every pattern. gpiozero errors are
    translated: an invalid pin is a
    :class:`~firmware_agent.errors.ConfigError`, a pin in use a
    :class:`~firmware_agent.errors.DeviceError`, no pin factory at all a
    :class:`~firmware_agent.errors.DeviceUnavailableError`.
    """

    def __init__(
        self,
        pins: FeedbackPins,
        *,
        pin_factory: gpiozero.Factory | None = None,
        buzzer_muted: bool = False,
    ) -> None:
        self.pins = pins
        # Muted: the buzzer pin is held (off) but never sounded; the LEDs play.
        self.buzzer_muted = buzzer_muted
        self._devices: list[gpiozero.DigitalOutputDevice] = []
        try:
            self._green = self._output(gpiozero.LED, pins.green_led, pin_factory)
            self._red = self._output(gpiozero.LED, pins.red_led, pin_factory)
            self._buzzer = self._output(gpiozero.Buzzer, pins.buzzer, pin_factory)
        except BaseException:
            self._close_devices()
            raise
        self._requests: queue.SimpleQueue[tuple[int, Signal] | object] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._last_requested = 0
        self._last_done = 0
        self._idle = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="driver-feedback", daemon=True)
        self._worker.start()

    @classmethod
    def create(
        cls,
        pins: FeedbackPins,
        *,
        pin_factory: gpiozero.Factory | None = None,
        buzzer_muted: bool = False,
    ) -> DriverFeedback | NullFeedback:
        """A :class:`DriverFeedback`, or a :class:`NullFeedback` where there is no GPIO."""
        try:
            return cls(pins, pin_factory=pin_factory, buzzer_muted=buzzer_muted)
        except DeviceUnavailableError as err:
            _LOG.warning("no GPIO, driver feedback (LEDs, buzzer) disabled: %s", err)
            return NullFeedback()

    def signal(self, s: Signal) -> None:
        """Start the pattern for ``s``, interrupting any pattern playing. Never blocks.

        Call it from one thread (the event loop's). After :meth:`close`, does nothing.
        """
        if self._closed:
            return
        request_id = next(self._ids)
        self._last_requested = request_id
        self._requests.put((request_id, Signal(s)))

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until every signal requested so far has played (or been interrupted).

        Returns False on timeout. For tests and for an orderly shutdown; never call it
        on the event loop.
        """
        with self._idle:
            return self._idle.wait_for(
                lambda: self._last_done >= self._last_requested, timeout=timeout_s
            )

    def close(self) -> None:
        """Stop any pattern, turn everything off and release the pins. Idempotent."""
        self._closed = True
        if self._worker.is_alive():
            self._requests.put(_CLOSE)
            self._worker.join()
        self._write_mock_history()
        self._close_devices()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _output(
        self,
        kind: type[gpiozero.DigitalOutputDevice],
        pin: int | str | None,
        pin_factory: gpiozero.Factory | None,
    ) -> gpiozero.DigitalOutputDevice | None:
        if pin is None:
            return None
        try:
            # gpiozero warns once per default factory it could not load; the reason
            # that matters is in BadPinFactory's message and our one warning.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", gpiozero.PinFactoryFallback)
                device = kind(pin, pin_factory=pin_factory)
        except BadPinFactory as err:
            raise DeviceUnavailableError(f"gpiozero found no pin factory: {err}") from err
        except PinInvalidPin as err:
            raise ConfigError(f"feedback pin {pin!r}: {err}") from err
        except GPIOPinInUse as err:
            raise DeviceError(f"feedback pin {pin!r}: {err}") from err
        except GPIOZeroError as err:
            raise DeviceError(f"feedback pin {pin!r} unusable: {err}") from err
        self._devices.append(device)
        return device

    def _write_mock_history(self) -> None:
        """The test hook of the module doc: mock pins' histories to a file."""
        target = os.environ.get(PIN_HISTORY_ENV)
        if not target:
            return
        lines = []
        for role, device in (("green", self._green), ("red", self._red), ("buzzer", self._buzzer)):
            pin = getattr(device, "pin", None)
            states = getattr(pin, "states", None)  # only gpiozero's MockPin keeps them
            if states is None:
                continue
            lines.append(
                json.dumps(
                    {
                        "pin": str(pin),
                        "role": role,
                        "states": [[round(t, 4), bool(v)] for t, v in states],
                    }
                )
            )
        if lines:
            with Path(target).open("a", encoding="utf-8") as out:
                out.write("".join(line + "\n" for line in lines))

    def _close_devices(self) -> None:
        for device in self._devices:
            device.close()
        self._devices.clear()

    def _set(self, green: bool, red: bool, buzzer: bool) -> None:
        buzzer = buzzer and not self.buzzer_muted
        for device, on in ((self._green, green), (self._red, red), (self._buzzer, buzzer)):
            if device is not None:
                device.value = on

    def _run(self) -> None:
        request = self._requests.get()
        while request is not _CLOSE:
            assert isinstance(request, tuple)
            request_id, s = request
            interrupted_by = self._play(PATTERNS[s])
            self._set(green=False, red=False, buzzer=False)
            if interrupted_by is not None:
                request = interrupted_by
                continue
            with self._idle:
                self._last_done = request_id
                self._idle.notify_all()
            request = self._newest(self._requests.get())
        self._set(green=False, red=False, buzzer=False)
        with self._idle:
            self._last_done = self._last_requested
            self._idle.notify_all()

    def _play(self, frames: tuple[Frame, ...]) -> tuple[int, Signal] | object | None:
        """Play ``frames``; return the request that interrupted them, if any."""
        for frame in frames:
            self._set(frame.green, frame.red, frame.buzzer)
            try:
                # Waiting on the queue is the frame's sleep and the interrupt at once.
                return self._newest(self._requests.get(timeout=frame.duration_s))
            except queue.Empty:
                continue
        return None

    def _newest(self, request: tuple[int, Signal] | object) -> tuple[int, Signal] | object:
        """Skip requests already superseded: only the latest signal is worth showing."""
        while request is not _CLOSE:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
        return request


class LogFeedback(NullFeedback):
    """Feedback as log lines (INFO, logger ``firmware_agent.feedback``): ``driver
    feedback: wrong_stop``; for a bench or the simulator, where no one watches LEDs.
    Nothing to open or wait for: the rest is :class:`NullFeedback`'s."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or _LOG
        self.signals: list[Signal] = []

    def signal(self, s: Signal) -> None:
        self.signals.append(Signal(s))
        self._log.info("driver feedback: %s", Signal(s).value)


PIN_HISTORY_ENV: Final = "FLEET_TEST_PIN_HISTORY"
FeedbackKind = Literal["gpio", "log", "none"]
FEEDBACK_KINDS: Final[tuple[FeedbackKind, ...]] = ("gpio", "log", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackSettings:
    """How ``fleet-agent run`` tells the driver what a scan did.

    ``kind``: ``gpio`` (LEDs and buzzer through gpiozero; no GPIO on this machine or
    unusable pins: none, logged), ``log`` (:class:`LogFeedback`) or ``none``.
    """

    kind: FeedbackKind = "none"
    pins: FeedbackPins = field(default_factory=FeedbackPins)
    buzzer_muted: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FEEDBACK_KINDS:
            raise ConfigError(f"feedback kind must be one of {FEEDBACK_KINDS}, got {self.kind!r}")


def open_feedback(
    settings: FeedbackSettings, *, pin_factory: gpiozero.Factory | None = None
) -> Feedback:
    """The feedback ``settings`` ask for. Blocking for ``gpio`` (opens the pins): call
    it off the event loop. ``pin_factory``: gpiozero's (None: its default, which
    ``GPIOZERO_PIN_FACTORY`` chooses).

    Never raises: feedback helps the driver but must not stop a van from recording
    deliveries. No GPIO at all gives :class:`NullFeedback` with one warning; pins that
    cannot be used (an invalid pin: :class:`ConfigError`, a pin in use:
    :class:`DeviceError`) give it with an error naming the pin."""
    if settings.kind == "gpio":
        try:
            return DriverFeedback.create(
                settings.pins, pin_factory=pin_factory, buzzer_muted=settings.buzzer_muted
            )
        except (ConfigError, DeviceError) as err:
            _LOG.error("driver feedback on GPIO unusable, running without it: %s", err)
            return NullFeedback()
    if settings.kind == "log":
        return LogFeedback()
    return NullFeedback()
