"""Keyboard-mode (HID) scanners: the key decoder with real evdev key codes, the reader.

There is no /dev/uinput here, so no virtual keyboard can be made: the decoder (all the
logic) is tested with evdev's real ``ecodes`` values; the reader's open/grab/reopen
loop is tested against real evdev failures (absent node, a file that is not an input
device) and, for a device that delivers events, against a small stand-in (:class:`
StandInDevice`) that yields real :class:`evdev.InputEvent` objects. The test at the end
drives a real uinput keyboard and runs wherever /dev/uinput is writable (a Pi).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import evdev
import pytest
from evdev import ecodes as e

from firmware_agent.contract.parcels import parse_scan
from firmware_agent.faults import FaultCounter
from firmware_agent.scan.hid_reader import HidDevice, HidScanner, KeyDecoder
from firmware_agent.scan.types import Scan

pytestmark = pytest.mark.usefixtures("no_blocking")

GS = "\x1d"
DOWN, UP, REPEAT = 1, 0, 2

# The US layout written out independently of the decoder's table: (key, needs shift).
_UNSHIFTED = {
    **{chr(ord("a") + i): getattr(e, f"KEY_{chr(ord('A') + i)}") for i in range(26)},
    **{str(d): getattr(e, f"KEY_{d}") for d in range(10)},
    " ": e.KEY_SPACE, "-": e.KEY_MINUS, "=": e.KEY_EQUAL, "[": e.KEY_LEFTBRACE,
    "]": e.KEY_RIGHTBRACE, ";": e.KEY_SEMICOLON, "'": e.KEY_APOSTROPHE, "`": e.KEY_GRAVE,
    "\\": e.KEY_BACKSLASH, ",": e.KEY_COMMA, ".": e.KEY_DOT, "/": e.KEY_SLASH,
}  # fmt: skip
_SHIFTED = {
    **{chr(ord("A") + i): getattr(e, f"KEY_{chr(ord('A') + i)}") for i in range(26)},
    "!": e.KEY_1, "@": e.KEY_2, "#": e.KEY_3, "$": e.KEY_4, "%": e.KEY_5, "^": e.KEY_6,
    "&": e.KEY_7, "*": e.KEY_8, "(": e.KEY_9, ")": e.KEY_0, "_": e.KEY_MINUS,
    "+": e.KEY_EQUAL, "{": e.KEY_LEFTBRACE, "}": e.KEY_RIGHTBRACE, ":": e.KEY_SEMICOLON,
    '"': e.KEY_APOSTROPHE, "~": e.KEY_GRAVE, "|": e.KEY_BACKSLASH, "<": e.KEY_COMMA,
    ">": e.KEY_DOT, "?": e.KEY_SLASH,
}  # fmt: skip
PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))


def press(key: int) -> list[tuple[int, int]]:
    return [(key, DOWN), (key, UP)]


def chord(modifier: int, *keys: int) -> list[tuple[int, int]]:
    return [(modifier, DOWN), *[ev for k in keys for ev in press(k)], (modifier, UP)]


def gs_as_ctrl(ctrl: int = e.KEY_LEFTCTRL) -> list[tuple[int, int]]:
    return chord(ctrl, e.KEY_RIGHTBRACE)


def gs_as_alt_code(alt: int = e.KEY_LEFTALT) -> list[tuple[int, int]]:
    return chord(alt, e.KEY_KP0, e.KEY_KP2, e.KEY_KP9)


def keystrokes(
    text: str,
    *,
    shift: int = e.KEY_LEFTSHIFT,
    gs: Callable[[], list[tuple[int, int]]] = gs_as_ctrl,
    enter: int | None = e.KEY_ENTER,
) -> list[tuple[int, int]]:
    """The key events a US-layout scanner sends to type ``text``."""
    events: list[tuple[int, int]] = []
    for char in text:
        if char == GS:
            events += gs()
        elif char in _UNSHIFTED:
            events += press(_UNSHIFTED[char])
        else:
            events += chord(shift, _SHIFTED[char])
    if enter is not None:
        events += press(enter)
    return events


def feed_all(decoder: KeyDecoder, events: list[tuple[int, int]]) -> list[str]:
    return [text for code, value in events if (text := decoder.feed(code, value)) is not None]


# --- the decoder ------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT])
def test_every_printable_ascii_character_round_trips(shift: int) -> None:
    decoder = KeyDecoder()
    assert feed_all(decoder, keystrokes(PRINTABLE_ASCII, shift=shift)) == [PRINTABLE_ASCII]
    assert decoder.faults.total() == 0


@pytest.mark.parametrize(
    "gs",
    [
        gs_as_ctrl,
        lambda: gs_as_ctrl(e.KEY_RIGHTCTRL),
        gs_as_alt_code,
        lambda: gs_as_alt_code(e.KEY_RIGHTALT),
        lambda: chord(e.KEY_LEFTALT, e.KEY_KP2, e.KEY_KP9),  # without the leading zero
    ],
    ids=["ctrl", "right-ctrl", "alt-029", "right-alt-029", "alt-29"],
)
def test_a_gs1_label_with_gs_separators_typed_either_way(
    gs: Callable[[], list[tuple[int, int]]],
) -> None:
    label = f"]C100106141412345678908{GS}4201234{GS}0109506000134352"
    decoder = KeyDecoder()
    (text,) = feed_all(decoder, keystrokes(label, gs=gs))
    assert text == label
    assert decoder.faults.total() == 0
    code = parse_scan(text)
    assert code.code == "106141412345678908"
    assert code.ship_to_postcode == "1234"


@pytest.mark.parametrize("enter", [e.KEY_ENTER, e.KEY_KPENTER])
def test_enter_and_keypad_enter_end_a_code(enter: int) -> None:
    decoder = KeyDecoder()
    events = keystrokes("JD0146000062812", enter=enter) + keystrokes("]C0ABC", enter=enter)
    assert feed_all(decoder, events) == ["JD0146000062812", "]C0ABC"]


def test_the_code_is_returned_on_the_enter_press_only() -> None:
    decoder = KeyDecoder()
    results = [decoder.feed(c, v) for c, v in keystrokes("ab")]
    assert results == [None, None, None, None, "ab", None]


def test_an_empty_enter_is_no_code() -> None:
    decoder = KeyDecoder()
    assert feed_all(decoder, press(e.KEY_ENTER) + press(e.KEY_KPENTER)) == []


def test_shift_applies_only_while_held() -> None:
    decoder = KeyDecoder()
    events = [(e.KEY_RIGHTSHIFT, DOWN), *press(e.KEY_A), (e.KEY_RIGHTSHIFT, UP), *press(e.KEY_A)]
    assert feed_all(decoder, events + press(e.KEY_ENTER)) == ["Aa"]


def test_both_shifts_held_then_one_released_is_still_shifted() -> None:
    decoder = KeyDecoder()
    events = [(e.KEY_LEFTSHIFT, DOWN), (e.KEY_RIGHTSHIFT, DOWN), (e.KEY_LEFTSHIFT, UP)]
    events += [*press(e.KEY_1), (e.KEY_RIGHTSHIFT, UP), *press(e.KEY_1), *press(e.KEY_ENTER)]
    assert feed_all(decoder, events) == ["!1"]


def test_caps_lock_toggles_letters_only() -> None:
    decoder = KeyDecoder()
    events = press(e.KEY_CAPSLOCK) + press(e.KEY_A) + press(e.KEY_1)
    events += chord(e.KEY_LEFTSHIFT, e.KEY_B) + press(e.KEY_CAPSLOCK) + press(e.KEY_C)
    assert feed_all(decoder, events + press(e.KEY_ENTER)) == ["A1bc"]


def test_autorepeat_is_ignored() -> None:
    decoder = KeyDecoder()
    events = [(e.KEY_A, DOWN), (e.KEY_A, REPEAT), (e.KEY_A, REPEAT), (e.KEY_A, UP)]
    assert feed_all(decoder, events + press(e.KEY_ENTER)) == ["a"]


def test_keypad_digits_type_digits_without_alt() -> None:
    decoder = KeyDecoder()
    events = press(e.KEY_KP4) + press(e.KEY_KP2) + press(e.KEY_KPDOT) + press(e.KEY_KPMINUS)
    assert feed_all(decoder, events + press(e.KEY_KPENTER)) == ["42.-"]


def test_unknown_keys_are_counted_and_dropped() -> None:
    faults = FaultCounter()
    decoder = KeyDecoder(faults)
    events = press(e.KEY_F1) + press(e.KEY_A) + press(e.KEY_ESC) + press(e.KEY_F1)
    events += chord(e.KEY_LEFTCTRL, e.KEY_SLASH)  # Ctrl+/ is no ASCII character
    assert feed_all(decoder, events + press(e.KEY_ENTER)) == ["a"]
    assert dict(faults.counts) == {"hid_unknown_key": 4}
    kinds = dict(faults.drain_first_seen())
    assert kinds["hid_unknown_key"] == "KEY_F1"


def test_ignored_keys_are_not_faults() -> None:
    decoder = KeyDecoder()
    events = press(e.KEY_NUMLOCK) + press(e.KEY_A) + press(e.KEY_ENTER)
    assert feed_all(decoder, events) == ["a"]
    assert decoder.faults.total() == 0


def test_alt_codes_beyond_ascii_are_faults() -> None:
    decoder = KeyDecoder()
    events = chord(e.KEY_LEFTALT, e.KEY_KP2, e.KEY_KP5, e.KEY_KP6) + press(e.KEY_A)
    assert feed_all(decoder, events + press(e.KEY_ENTER)) == ["a"]
    assert dict(decoder.faults.counts) == {"hid_bad_alt_code": 1}


def test_ctrl_letters_type_control_characters() -> None:
    decoder = KeyDecoder()
    events = chord(e.KEY_LEFTCTRL, e.KEY_D) + chord(e.KEY_LEFTCTRL, e.KEY_6)
    assert feed_all(decoder, events + press(e.KEY_ENTER)) == ["\x04\x1e"]


def test_an_endless_code_is_cut_and_counted() -> None:
    decoder = KeyDecoder(max_chars=10)
    events = keystrokes("a" * 25) + keystrokes("b")
    assert feed_all(decoder, events) == ["a" * 10, "b"]
    assert dict(decoder.faults.counts) == {"hid_code_too_long": 1}


def test_reset_drops_the_partial_code_and_the_modifiers() -> None:
    decoder = KeyDecoder()
    feed_all(decoder, [(e.KEY_LEFTSHIFT, DOWN), *press(e.KEY_A)])
    assert decoder.pending == "A"
    decoder.reset()  # the device vanished with shift held
    assert decoder.pending == ""
    assert feed_all(decoder, keystrokes("b")) == ["b"]


# --- the reader --------------------------------------------------------------------------


class UnpluggedError(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENODEV, "No such device")


class StandInDevice:
    """The four calls HidScanner makes of an evdev.InputDevice, and a record of them.

    Events are real :class:`evdev.InputEvent` objects put in with :meth:`type_text`;
    :meth:`unplug` makes the read loop raise ENODEV, as evdev does when the device
    node goes away.
    """

    def __init__(self, grab_error: OSError | None = None) -> None:
        self.calls: list[str] = []
        self._grab_error = grab_error
        self._events: asyncio.Queue[evdev.InputEvent | OSError] = asyncio.Queue()

    def grab(self) -> None:
        self.calls.append("grab")
        if self._grab_error is not None:
            raise self._grab_error

    def ungrab(self) -> None:
        self.calls.append("ungrab")
        if "unplugged" in self.calls:
            raise UnpluggedError  # what a real ungrab of a vanished device does

    def close(self) -> None:
        self.calls.append("close")

    async def async_read_loop(self) -> AsyncIterator[evdev.InputEvent]:
        self.calls.append("read")
        while True:
            item = await self._events.get()
            if isinstance(item, OSError):
                raise item
            yield item

    def type_text(self, text: str, **kwargs: object) -> None:
        for code, value in keystrokes(text, **kwargs):  # type: ignore[arg-type]
            self._events.put_nowait(evdev.InputEvent(1_700_000_000, 0, e.EV_KEY, code, value))
            # Real keyboards interleave sync reports; the reader must skip them.
            self._events.put_nowait(evdev.InputEvent(1_700_000_000, 0, e.EV_SYN, 0, 0))
        self._events.put_nowait(evdev.InputEvent(1_700_000_000, 0, e.EV_MSC, e.MSC_SCAN, 7))

    def unplug(self) -> None:
        self.calls.append("unplugged")
        self._events.put_nowait(UnpluggedError())


class Opener:
    """Hands out, in order, stand-in devices or open errors; records the paths asked for."""

    def __init__(self, *outcomes: StandInDevice | OSError) -> None:
        self._outcomes = list(outcomes)
        self.paths: list[str] = []

    def __call__(self, path: str) -> HidDevice:
        self.paths.append(path)
        if not self._outcomes:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        outcome = self._outcomes.pop(0)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome


async def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    # Polling on purpose: the conditions are the reader's own state (connected, counts).
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def consuming(scanner: HidScanner) -> AsyncIterator[list[Scan]]:
    scans: list[Scan] = []

    async def run() -> None:
        async with contextlib.aclosing(scanner.scans()) as stream:
            async for scan in stream:
                scans.append(scan)

    task = asyncio.create_task(run(), name="hid-consumer")
    try:
        yield scans
    finally:
        assert not task.done(), "the reader must never end by itself"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fast_scanner(
    path: str, opener: Callable[[str], HidDevice] | None = None, **kw: bool
) -> HidScanner:
    extra = {"open_device": opener} if opener is not None else {}
    return HidScanner(path, backoff_initial_s=0.01, backoff_max_s=0.05, **kw, **extra)  # type: ignore[arg-type]


def test_real_evdev_open_failures_are_retried_not_raised(tmp_path: Path) -> None:
    # No mock here: evdev itself fails on an absent node and on a file that is no
    # input device (ENOTTY from its first ioctl).
    not_a_device = tmp_path / "event0"
    not_a_device.write_bytes(b"")

    async def scenario() -> tuple[HidScanner, HidScanner]:
        absent = fast_scanner(str(tmp_path / "event9"))
        wrong = fast_scanner(str(not_a_device))
        async with consuming(absent), consuming(wrong):
            await wait_until(
                lambda: absent.stats["open_failures"] >= 3 and wrong.stats["open_failures"] >= 3
            )
        return absent, wrong

    absent, wrong = asyncio.run(scenario())
    for scanner in (absent, wrong):
        assert scanner.stats["opens"] == 0
        assert not scanner.connected


def test_scans_are_read_from_a_grabbed_device() -> None:
    device = StandInDevice()

    async def scenario() -> list[Scan]:
        scanner = fast_scanner("/dev/fleet/scanner-hid", Opener(device))
        async with consuming(scanner) as scans:
            await wait_until(lambda: scanner.connected)
            device.type_text(f"]C100106141412345678908{GS}4201234")
            device.type_text("JD0146000062812", gs=gs_as_alt_code)
            await wait_until(lambda: len(scans) == 2)
            assert device.calls == ["grab", "read"]
        return scans

    scans = asyncio.run(scenario())
    assert [s.raw for s in scans] == [f"]C100106141412345678908{GS}4201234", "JD0146000062812"]
    assert {s.source for s in scans} == {"hid"}
    assert parse_scan(scans[0].raw).code == "106141412345678908"
    # Cancelling the consumer releases the device.
    assert device.calls[-2:] == ["ungrab", "close"]


def test_without_grab_the_device_is_only_opened() -> None:
    device = StandInDevice()

    async def scenario() -> None:
        scanner = fast_scanner("/dev/input/event3", Opener(device), grab=False)
        async with consuming(scanner) as scans:
            device.type_text("A")
            await wait_until(lambda: len(scans) == 1)

    asyncio.run(scenario())
    assert device.calls == ["read", "close"]


def test_unplug_mid_code_then_replug() -> None:
    first, second = StandInDevice(), StandInDevice()
    opener = Opener(first, FileNotFoundError(errno.ENOENT, "gone"), second)

    async def scenario() -> tuple[list[Scan], HidScanner]:
        scanner = fast_scanner("/dev/fleet/scanner-hid", opener)
        async with consuming(scanner) as scans:
            first.type_text("JD0146000062812")
            await wait_until(lambda: len(scans) == 1)
            first.type_text("]C1001061414", enter=None)  # the cable comes out mid-code
            first.unplug()
            await wait_until(lambda: scanner.stats["disconnects"] == 1)
            await wait_until(lambda: scanner.connected)  # after one failed reopen
            second.type_text("]C100106141412345678908")
            await wait_until(lambda: len(scans) == 2)
        return scans, scanner

    scans, scanner = asyncio.run(scenario())
    assert [s.raw for s in scans] == ["JD0146000062812", "]C100106141412345678908"]
    assert first.calls == ["grab", "read", "unplugged", "ungrab", "close"]
    assert second.calls[:2] == ["grab", "read"]
    assert scanner.stats == {"opens": 2, "disconnects": 1, "open_failures": 1}
    assert scanner.faults.counts["hid_partial_code"] == 1
    assert opener.paths == ["/dev/fleet/scanner-hid"] * 3


def test_a_device_grabbed_by_someone_else_is_closed_and_retried() -> None:
    busy = StandInDevice(grab_error=OSError(errno.EBUSY, "Device or resource busy"))
    free = StandInDevice()

    async def scenario() -> HidScanner:
        scanner = fast_scanner("/dev/input/event3", Opener(busy, free))
        async with consuming(scanner) as scans:
            free.type_text("A")
            await wait_until(lambda: len(scans) == 1)
        return scanner

    scanner = asyncio.run(scenario())
    assert busy.calls == ["grab", "close"]  # never read, never left open
    assert scanner.stats["open_failures"] == 1


def _uinput_writable() -> bool:
    return os.path.exists("/dev/uinput") and os.access("/dev/uinput", os.W_OK)


@pytest.fixture
def uinput_keyboard() -> Iterator[evdev.UInput]:
    keys = sorted({*_UNSHIFTED.values(), *_SHIFTED.values(), e.KEY_LEFTSHIFT, e.KEY_ENTER,
                   e.KEY_LEFTCTRL, e.KEY_LEFTALT, e.KEY_KP0, e.KEY_KP2, e.KEY_KP9})  # fmt: skip
    with evdev.UInput({e.EV_KEY: keys}, name="fleet-test-scanner") as ui:
        yield ui


@pytest.mark.skipif(not _uinput_writable(), reason="needs a writable /dev/uinput (a Pi)")
def test_a_real_virtual_keyboard(uinput_keyboard: evdev.UInput) -> None:
    ui = uinput_keyboard
    assert ui.device is not None
    path = str(ui.device.path)
    label = f"]C100106141412345678908{GS}4201234"

    async def scenario() -> list[Scan]:
        scanner = fast_scanner(path)
        async with consuming(scanner) as scans:
            await wait_until(lambda: scanner.connected)
            for code, value in keystrokes(label) + keystrokes("AB", gs=gs_as_alt_code):
                ui.write(e.EV_KEY, code, value)
                ui.syn()
            await wait_until(lambda: len(scans) == 2)
        return scans

    scans = asyncio.run(scenario())
    assert [s.raw for s in scans] == [label, "AB"]
