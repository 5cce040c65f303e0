"""Reading a barcode scanner in USB HID keyboard mode, through evdev.

Most scanners ship as keyboards: each code is "typed" as key presses and ended with
Enter. Reading them as a keyboard would need a console with focus and would leak
every code into it; instead the agent opens the scanner's evdev node
(``/dev/input/by-id/...-event-kbd``, or udev's ``/dev/fleet/scanner-hid``), *grabs* it
so no one else sees the keystrokes, and turns key events back into text with
:class:`KeyDecoder` (a pure state machine, US layout).

GS1 separators cannot be typed: scanners send GS (ASCII 29) either as Ctrl+] or as
Alt + 0 2 9 on the numeric keypad (the Windows Alt-code). Both are decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from typing import Final, Protocol

from evdev import InputDevice, InputEvent, ecodes

from firmware_agent.contract.backoff import Backoff
from firmware_agent.errors import DeviceUnavailableError
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.scan.types import Scan, utc_now

_LOG = logging.getLogger(__name__)

KEY_UP: Final = 0
KEY_DOWN: Final = 1
KEY_REPEAT: Final = 2


def _us_layout() -> dict[int, tuple[str, str]]:
    """Key code -> (plain, shifted) character on a US keyboard."""
    keys: dict[int, tuple[str, str]] = {}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        keys[getattr(ecodes, f"KEY_{letter.upper()}")] = (letter, letter.upper())
    for digit, shifted in zip("1234567890", "!@#$%^&*()", strict=True):
        keys[getattr(ecodes, f"KEY_{digit}")] = (digit, shifted)
    for name, plain, shifted in (
        ("MINUS", "-", "_"),
        ("EQUAL", "=", "+"),
        ("LEFTBRACE", "[", "{"),
        ("RIGHTBRACE", "]", "}"),
        ("SEMICOLON", ";", ":"),
        ("APOSTROPHE", "'", '"'),
        ("GRAVE", "`", "~"),
        ("BACKSLASH", "\\", "|"),
        ("COMMA", ",", "<"),
        ("DOT", ".", ">"),
        ("SLASH", "/", "?"),
        ("SPACE", " ", " "),
        ("TAB", "\t", "\t"),
        # Num Lock on, as scanners assume when they type on the keypad.
        ("KPSLASH", "/", "/"),
        ("KPASTERISK", "*", "*"),
        ("KPMINUS", "-", "-"),
        ("KPPLUS", "+", "+"),
        ("KPDOT", ".", "."),
    ):
        keys[getattr(ecodes, f"KEY_{name}")] = (plain, shifted)
    for digit in "0123456789":
        keys[getattr(ecodes, f"KEY_KP{digit}")] = (digit, digit)
    return keys


_CHARS: Final = _us_layout()
_KEYPAD_DIGITS: Final = {getattr(ecodes, f"KEY_KP{d}"): d for d in "0123456789"}
_SHIFT: Final = frozenset({ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT})
_CTRL: Final = frozenset({ecodes.KEY_LEFTCTRL, ecodes.KEY_RIGHTCTRL})
_ALT: Final = frozenset({ecodes.KEY_LEFTALT, ecodes.KEY_RIGHTALT})
_ENTER: Final = frozenset({ecodes.KEY_ENTER, ecodes.KEY_KPENTER})
# Keys a scanner may press that carry no character: ignored, not faults.
_IGNORED: Final = frozenset({ecodes.KEY_NUMLOCK, ecodes.KEY_LEFTMETA, ecodes.KEY_RIGHTMETA})
# Ctrl + key -> ASCII control character, by the key's unshifted character: Ctrl+A is
# 1 ... Ctrl+Z is 26, Ctrl+[ 27, Ctrl+\ 28, Ctrl+] 29 (GS), Ctrl+6 (^) 30, Ctrl+- (_) 31.
_CTRL_CHARS: Final = {
    **{letter: chr(i + 1) for i, letter in enumerate("abcdefghijklmnopqrstuvwxyz")},
    "[": "\x1b",
    "\\": "\x1c",
    "]": "\x1d",
    "6": "\x1e",
    "-": "\x1f",
}
DEFAULT_MAX_CODE_CHARS: Final = 512
# The longest Alt code: Alt+0029 (GS), a leading 0 and three digits.
_MAX_ALT_DIGITS: Final = 4


class KeyDecoder:
    """Key events in, one code's text out when Enter is pressed; pure, no I/O.

    ``feed(code, value)`` takes an ``EV_KEY`` event (``value``: 1 press, 0 release,
    2 autorepeat, which is ignored) and returns the text typed since the last Enter
    when this event is the press of KEY_ENTER or KEY_KPENTER (``None`` otherwise, and
    for an Enter with nothing typed). Layout: US, Num Lock on. Left and right Shift,
    Ctrl and Alt are tracked; Caps Lock starts off and toggles on each press (a
    scanner set to "caps lock aware" presses it itself). Ctrl + key types the ASCII
    control character (Ctrl+] is GS); Alt held while typing keypad digits types the
    character with that decimal code when Alt is released (Alt+029 is GS; codes
    above 127 or of more than four digits are a fault).

    Faults, counted in ``faults``: ``hid_unknown_key`` (a key with no character in
    the layout, dropped), ``hid_bad_alt_code``, ``hid_code_too_long`` (text beyond
    ``max_chars`` is dropped up to the Enter).
    """

    __slots__ = ("_alt_digits", "_caps", "_chars", "_down", "_max", "_too_long", "faults")

    def __init__(
        self, faults: FaultCounter | None = None, *, max_chars: int = DEFAULT_MAX_CODE_CHARS
    ) -> None:
        self.faults = faults if faults is not None else FaultCounter()
        self._max = max_chars
        self._down: set[int] = set()
        self._caps = False
        self._chars: list[str] = []
        self._alt_digits: list[str] = []
        self._too_long = False

    @property
    def pending(self) -> str:
        """What has been typed since the last Enter."""
        return "".join(self._chars)

    def reset(self) -> None:
        """Forget modifiers and the partial code (the device went away)."""
        self._down.clear()
        self._chars.clear()
        self._alt_digits.clear()
        self._caps = False
        self._too_long = False

    def feed(self, code: int, value: int) -> str | None:
        if value == KEY_UP:
            self._down.discard(code)
            if code in _ALT and not self._down & _ALT:
                self._end_alt_code()
            return None
        if value != KEY_DOWN:
            return None  # autorepeat: a scanner never holds a key on purpose
        self._down.add(code)
        if code in _ENTER:
            return self._end_code()
        if code in _SHIFT or code in _CTRL or code in _ALT or code in _IGNORED:
            return None
        if code == ecodes.KEY_CAPSLOCK:
            self._caps = not self._caps
            return None
        if self._down & _ALT and code in _KEYPAD_DIGITS:
            # One digit past the longest code is kept: the code is bad whatever follows,
            # and a stuck Alt key must not grow the digits without bound.
            if len(self._alt_digits) <= _MAX_ALT_DIGITS:
                self._alt_digits.append(_KEYPAD_DIGITS[code])
            return None
        chars = _CHARS.get(code)
        if chars is None:
            self.faults.add("hid_unknown_key", _key_name(code))
            return None
        if self._down & _CTRL:
            control = _CTRL_CHARS.get(chars[0])
            if control is None:
                self.faults.add("hid_unknown_key", f"Ctrl+{_key_name(code)}")
                return None
            self._type(control)
            return None
        shifted = bool(self._down & _SHIFT)
        if chars[0].isalpha():
            shifted ^= self._caps
        self._type(chars[1] if shifted else chars[0])
        return None

    def _type(self, char: str) -> None:
        if len(self._chars) >= self._max:
            if not self._too_long:
                self.faults.add("hid_code_too_long", self.pending[:40])
            self._too_long = True
            return
        self._chars.append(char)

    def _end_alt_code(self) -> None:
        digits = "".join(self._alt_digits)
        self._alt_digits.clear()
        if not digits:
            return
        if len(digits) > _MAX_ALT_DIGITS:
            self.faults.add("hid_bad_alt_code", f"Alt+{digits}...")
            return
        value = int(digits)
        if 0 < value < 128:
            self._type(chr(value))
        else:
            self.faults.add("hid_bad_alt_code", f"Alt+{digits}")

    def _end_code(self) -> str | None:
        text = "".join(self._chars)
        self._chars.clear()
        self._alt_digits.clear()
        self._too_long = False
        return text or None


def _key_name(code: int) -> str:
    name = ecodes.KEY.get(code) or ecodes.BTN.get(code)
    if isinstance(name, list | tuple):
        name = name[0]
    return str(name) if name is not None else f"key {code}"


class HidDevice(Protocol):
    """What :class:`HidScanner` needs of an :class:`evdev.InputDevice`."""

    def grab(self) -> None: ...
    def ungrab(self) -> None: ...
    def close(self) -> None: ...
    def async_read_loop(self) -> AsyncIterator[InputEvent]: ...


def open_input_device(path: str) -> HidDevice:
    """The real device: :class:`evdev.InputDevice` (blocking open and ioctls)."""
    device: HidDevice = InputDevice(path)
    return device


class HidScanner:
    """``async for scan in scanner.scans()``: every code a keyboard-mode scanner types.

    Opens ``device_path`` with evdev (in a worker thread: the open and its ioctls
    block), grabs it if ``grab`` (keystrokes then reach no console or X session),
    reads with ``async_read_loop()``, and on any failure (device unplugged: ENODEV;
    absent; grabbed by someone else: EBUSY) ungrabs, closes, backs off (capped,
    jittered) and reopens. A code half-typed when the device vanished is dropped
    (``hid_partial_code``). ``stats`` counts ``opens``, ``open_failures`` and
    ``disconnects``; ``faults`` the decoding faults (each kind logged once).

    ``open_device`` exists for tests without /dev/uinput; it defaults to evdev.
    """

    def __init__(
        self,
        device_path: str,
        grab: bool = True,
        clock: Callable[[], datetime] = utc_now,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        open_device: Callable[[str], HidDevice] = open_input_device,
    ) -> None:
        self.device_path = device_path
        self.grab = grab
        self.stats: Counter[str] = Counter()
        self.faults = FaultCounter()
        self.decoder = KeyDecoder(self.faults)
        self.connected = False
        self._clock = clock
        self._open_device = open_device
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)

    async def scans(self) -> AsyncGenerator[Scan, None]:
        while True:
            device = await self._open()
            if device is None:
                await asyncio.sleep(self._backoff.next_delay_s())
                continue
            self.stats["opens"] += 1
            self.connected = True
            _LOG.info("HID scanner open on %s (grabbed: %s)", self.device_path, self.grab)
            try:
                async for event in device.async_read_loop():
                    if event.type != ecodes.EV_KEY:
                        continue
                    text = self.decoder.feed(event.code, event.value)
                    if text is not None:
                        # A code proves the device works (as data does for serial).
                        self._backoff.reset()
                        yield Scan(time=self._clock(), raw=text, source="hid")
                    log_first_seen(_LOG, self.faults, f"HID scanner {self.device_path}")
                raise DeviceUnavailableError("the device stopped sending events")
            except OSError as err:
                self.stats["disconnects"] += 1
                _LOG.warning("HID scanner %s lost: %s", self.device_path, err)
            finally:
                self.connected = False
                self._release(device)
                if self.decoder.pending:
                    self.faults.add("hid_partial_code", self.decoder.pending)
                self.decoder.reset()
                log_first_seen(_LOG, self.faults, f"HID scanner {self.device_path}")
            await asyncio.sleep(self._backoff.next_delay_s())

    async def _open(self) -> HidDevice | None:
        try:
            device = await asyncio.to_thread(self._open_device, self.device_path)
        except OSError as err:
            self._open_failed(err)
            return None
        if self.grab:
            try:
                device.grab()
            except OSError as err:
                # EBUSY: another process (a getty, a second agent) holds the grab.
                with contextlib.suppress(OSError):
                    device.close()
                self._open_failed(err)
                return None
        return device

    def _release(self, device: HidDevice) -> None:
        if self.grab:
            # Fails with ENODEV once the device is gone; the kernel dropped the grab.
            with contextlib.suppress(OSError):
                device.ungrab()
        with contextlib.suppress(OSError):
            device.close()

    def _open_failed(self, err: OSError) -> None:
        self.stats["open_failures"] += 1
        n = self.stats["open_failures"]
        if n & (n - 1) == 0:
            hint = " (grabbed by another process?)" if err.errno == errno.EBUSY else ""
            _LOG.warning(
                "HID scanner %s unavailable%s (%d attempts so far): %s",
                self.device_path,
                hint,
                n,
                err,
            )
