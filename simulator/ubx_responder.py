"""A u-blox receiver's UBX side, simulated: ``feed(host bytes) -> list[reply frames]``.

Pure (no I/O, no clock): :class:`~simulator.receiver.PtyReceiver` feeds it what the
host writes and sends back what it returns; :class:`~simulator.static_receiver.
StaticReceiver` asks it how often to send NMEA and which sentences.

Two generations, picked at construction:

- ``m8`` (a NEO-M8N, protocol 18): answers UBX-MON-VER; applies and acknowledges
  UBX-CFG-RATE, CFG-NAV5, CFG-MSG (class 0xF0, the NMEA rates) and CFG-CFG (save);
  answers CFG-RATE and CFG-NAV5 polls; NAKs CFG-VALSET/VALGET, as an M8 does.
- ``m9`` (a NEO-M9N, protocol 32): answers UBX-MON-VER; applies CFG-VALSET (layers
  RAM, BBR, flash) and answers CFG-VALGET from RAM, BBR or flash; NAKs the legacy
  CFG messages (as an M10 does; an M9 still takes some, the host never relies on it).

Any other CFG message is NAKed; other classes are ignored. ``refuse`` maps a message
identity (``"CFG-NAV5"``) to ``"nak"`` or ``"ignore"`` to act out a receiver that
rejects or never answers that setting (its read-back poll is still answered; MON-VER
can be refused too: a receiver with UBX input off). :meth:`power_cycle` restores
what was saved (to BBR or flash), as a receiver does after losing power.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pyubx2 import (
    GET,
    SETPOLL,
    U4,
    UBXMessage,
    UBXReader,
    calc_checksum,
    cfgkey2name,
    cfgname2key,
    val2bytes,
)
from pyubx2.exceptions import UBXMessageError, UBXParseError, UBXTypeError

from simulator.errors import ConfigError
from simulator.playback import TimedChunk

UbxGeneration = Literal["m8", "m9"]
GENERATIONS: tuple[UbxGeneration, ...] = ("m8", "m9")

# The NMEA sentences whose output rates it keeps, by their UBX message id (class 0xF0).
NMEA_IDS: dict[str, int] = {"GGA": 0x00, "GSA": 0x02, "RMC": 0x04, "VTG": 0x05}
_NMEA_NAMES = {value: name for name, value in NMEA_IDS.items()}
_SYNC = b"\xb5\x62"
_MAX_PAYLOAD_BYTES = 4096
_VERSIONS: dict[UbxGeneration, tuple[str, str, tuple[str, ...]]] = {
    "m8": (
        "ROM CORE 3.01 (107888)",
        "00080000",
        ("FWVER=SPG 3.01", "PROTVER=18.00", "MOD=NEO-M8N"),
    ),
    "m9": ("ROM SPG 4.04 (0a8ff4)", "00190000", ("FWVER=SPG 4.04", "PROTVER=32.01", "MOD=NEO-M9N")),
}
_LEGACY_SET = frozenset({"CFG-RATE", "CFG-NAV5", "CFG-MSG", "CFG-CFG"})
_CFG_CLASS = 0x06
_LAYER_RAM, _LAYER_BBR, _LAYER_FLASH = 0, 1, 2  # CFG-VALGET layer numbers


@dataclass(slots=True)
class UbxState:
    """A receiver's settings: measurement period, nav rate, dynamic model, NMEA rates."""

    meas_period_ms: int = 1000
    nav_rate: int = 1
    dynamic_model: int = 0  # portable: the factory default
    nmea: dict[str, int] = field(default_factory=lambda: {"GGA": 1, "GSA": 1, "RMC": 1, "VTG": 1})

    @property
    def period_s(self) -> float:
        """Seconds between navigation epochs (and so between NMEA bursts)."""
        return self.meas_period_ms * self.nav_rate / 1000.0


class UbxResponder:
    """The UBX side of a simulated u-blox receiver (see the module doc)."""

    def __init__(
        self,
        generation: UbxGeneration = "m8",
        *,
        refuse: Mapping[str, Literal["nak", "ignore"]] | None = None,
    ) -> None:
        if generation not in GENERATIONS:
            raise ConfigError(f"UBX generation {generation!r} is not one of {GENERATIONS}")
        self.generation: UbxGeneration = generation
        self.refuse = dict(refuse or {})
        self.state = UbxState()
        self.saved = UbxState()  # what BBR/flash hold: restored by power_cycle
        self.received: list[str] = []  # identities of every message the host sent
        self._buf = b""

    def power_cycle(self) -> None:
        """Lose power and start again: RAM is what was saved."""
        self.state = copy.deepcopy(self.saved)

    def feed(self, data: bytes) -> list[bytes]:
        replies: list[bytes] = []
        for frame in self._frames(data):
            try:
                message = UBXReader.parse(frame, msgmode=SETPOLL)
            except (UBXParseError, UBXMessageError, UBXTypeError, ValueError, KeyError):
                continue  # a message type pyubx2 does not know: a receiver ignores it
            self.received.append(message.identity)
            replies += self._answer(message, frame)
        return replies

    def _frames(self, data: bytes) -> list[bytes]:
        """Whole, valid UBX frames; whatever else the host writes is skipped."""
        buf = self._buf + data
        frames: list[bytes] = []
        while (start := buf.find(_SYNC)) >= 0 and len(buf) - start >= 6:
            buf = buf[start:]
            length = int.from_bytes(buf[4:6], "little")
            if length > _MAX_PAYLOAD_BYTES:
                buf = buf[2:]
                continue
            if len(buf) < length + 8:
                break
            frame = buf[: length + 8]
            if calc_checksum(frame[2:-2]) == frame[-2:]:
                frames.append(frame)
                buf = buf[length + 8 :]
            else:
                buf = buf[2:]
        else:
            if start < 0:  # keep a trailing 0xB5: half a sync
                buf = buf[-1:] if buf.endswith(_SYNC[:1]) else b""
        self._buf = buf
        return frames

    def _answer(self, message: UBXMessage, frame: bytes) -> list[bytes]:
        identity = str(message.identity)
        cls, mid = frame[2], frame[3]
        # A zero-length payload is a poll; so is CFG-VALGET (it carries the keys).
        polled = len(frame) == 8 or identity == "CFG-VALGET"
        # Refusals act on settings (and MON-VER); read-back polls are still answered.
        refusal = self.refuse.get(identity) if not polled or identity == "MON-VER" else None
        if refusal == "ignore":
            return []
        if refusal == "nak":
            return [_ack(cls, mid, ok=False)]
        if identity == "MON-VER":
            return [_version(self.generation)]
        if cls != _CFG_CLASS:
            return []
        if self.generation == "m8" and identity in _LEGACY_SET:
            reply = self._legacy(identity, message, polled)
        elif self.generation == "m9" and identity == "CFG-VALSET":
            reply = self._valset(frame)
        elif self.generation == "m9" and identity == "CFG-VALGET":
            reply = self._valget(frame)
        else:
            return [_ack(cls, mid, ok=False)]
        return [*reply, _ack(cls, mid, ok=True)]

    def _legacy(self, identity: str, message: UBXMessage, polled: bool) -> list[bytes]:
        state = self.state
        if identity == "CFG-RATE":
            if polled:
                return [
                    _get(
                        "CFG-RATE", measRate=state.meas_period_ms, navRate=state.nav_rate, timeRef=1
                    )
                ]
            state.meas_period_ms, state.nav_rate = int(message.measRate), int(message.navRate) or 1
        elif identity == "CFG-NAV5":
            if polled:
                return [_get("CFG-NAV5", dyn=1, dynModel=state.dynamic_model)]
            if message.dyn:
                state.dynamic_model = int(message.dynModel)
        elif identity == "CFG-MSG":
            name = _NMEA_NAMES.get(int(message.msgID)) if int(message.msgClass) == 0xF0 else None
            if name is not None:
                state.nmea[name] = int(message.rateUART1)
        elif identity == "CFG-CFG" and (message.devBBR or message.devFlash):
            self.saved = copy.deepcopy(state)
        return []

    def _valset(self, frame: bytes) -> list[bytes]:
        payload = frame[6:-2]
        layers = payload[1]
        values = _key_values(payload[4:])
        for state in self._layers(layers):
            for name, value in values.items():
                _apply_key(state, name, value)
        return []

    def _layers(self, layers: int) -> list[UbxState]:
        out = []
        if layers & 0x01:
            out.append(self.state)
        if layers & 0x06:  # BBR or flash: both survive a power cycle here
            out.append(self.saved)
        return out

    def _valget(self, frame: bytes) -> list[bytes]:
        payload = frame[6:-2]
        layer = payload[1]
        state = self.state if layer == _LAYER_RAM else self.saved
        keys = [int.from_bytes(payload[i : i + 4], "little") for i in range(4, len(payload), 4)]
        body = bytes((1, layer, 0, 0))
        for key in keys:
            name = _key_name(key)
            value = _key_value(state, name) if name is not None else None
            if name is None or value is None:
                continue
            _, kind = cfgname2key(name)
            body += val2bytes(key, U4) + val2bytes(value, kind)
        return [bytes(UBXMessage("CFG", "CFG-VALGET", GET, payload=body).serialize())]


def at_receiver_rate(chunks: Iterable[TimedChunk], responder: UbxResponder) -> Iterator[TimedChunk]:
    """A played day's epochs thinned to the rate the receiver is set to, read live.

    A day generated at 10 Hz plays every other epoch once the host sets 5 Hz; a rate
    above the day's plays every epoch (the day has no more).
    """
    last_s: float | None = None
    for chunk in chunks:
        # A millisecond of slack: offsets are sums of floats.
        if last_s is None or chunk.offset_s - last_s >= responder.state.period_s - 1e-3:
            last_s = chunk.offset_s
            yield chunk


def _key_values(data: bytes) -> dict[str, int]:
    """CFG-VALSET key/value pairs; value widths from pyubx2's configuration database."""
    out: dict[str, int] = {}
    i = 0
    while i + 4 <= len(data):
        key = int.from_bytes(data[i : i + 4], "little")
        # The key's size bits (28..30): 1 bit, 1, 2, 4 or 8 bytes.
        size = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8}.get((key >> 28) & 0x7, 1)
        value = int.from_bytes(data[i + 4 : i + 4 + size], "little")
        name = _key_name(key)
        if name is not None:
            out[name] = value
        i += 4 + size
    return out


def _key_name(key: int) -> str | None:
    try:
        name, _ = cfgkey2name(key)
    except UBXMessageError:  # a key pyubx2's configuration database does not know
        return None
    return str(name)


def _apply_key(state: UbxState, name: str, value: int) -> None:
    if name == "CFG_RATE_MEAS":
        state.meas_period_ms = value
    elif name == "CFG_RATE_NAV":
        state.nav_rate = value or 1
    elif name == "CFG_NAVSPG_DYNMODEL":
        state.dynamic_model = value
    elif name.startswith("CFG_MSGOUT_NMEA_ID_") and name.endswith("_UART1"):
        sentence = name.removeprefix("CFG_MSGOUT_NMEA_ID_").removesuffix("_UART1")
        if sentence in NMEA_IDS:
            state.nmea[sentence] = value


def _key_value(state: UbxState, name: str) -> int | None:
    if name == "CFG_RATE_MEAS":
        return state.meas_period_ms
    if name == "CFG_RATE_NAV":
        return state.nav_rate
    if name == "CFG_NAVSPG_DYNMODEL":
        return state.dynamic_model
    return None


def _get(identity: str, **fields: object) -> bytes:
    return bytes(UBXMessage("CFG", identity, GET, **fields).serialize())


def _ack(cls: int, mid: int, *, ok: bool) -> bytes:
    return bytes(
        UBXMessage("ACK", "ACK-ACK" if ok else "ACK-NAK", GET, clsID=cls, msgID=mid).serialize()
    )


def _version(generation: UbxGeneration) -> bytes:
    software, hardware, extensions = _VERSIONS[generation]
    payload = software.encode().ljust(30, b"\x00") + hardware.encode().ljust(10, b"\x00")
    for extension in extensions:
        payload += extension.encode().ljust(30, b"\x00")
    return bytes(UBXMessage("MON", "MON-VER", GET, payload=payload).serialize())
