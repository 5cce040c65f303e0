"""u-blox receiver set-up over UBX, the pure part: messages, replies, verdict.

No I/O here (the serial side is :mod:`firmware_agent.gnss.ubx_link`, the sequence
:mod:`firmware_agent.gnss.receiver_setup`). pyubx2 builds and parses every message.

Two generations of the protocol:

- ``legacy`` (u-blox 6/7/M8): UBX-CFG-RATE (measurement period), UBX-CFG-NAV5
  (dynamic platform model), UBX-CFG-MSG (one NMEA message on UART1 and USB) and
  UBX-CFG-CFG (save to BBR and flash); read back with CFG-RATE and CFG-NAV5 polls.
- ``valset`` (u-blox M9/M10/F9): one UBX-CFG-VALSET with CFG-RATE-MEAS, CFG-RATE-NAV,
  CFG-NAVSPG-DYNMODEL and CFG-MSGOUT-NMEA_ID_*, to RAM, or to RAM+BBR+flash when
  saving; read back with UBX-CFG-VALGET from RAM.

The generation comes from UBX-MON-VER: the hardware version first (``00080000`` is an
M8, ``00190000`` an M9/F9, ``000A0000`` an M10), else the protocol version
(``PROTVER=`` 27 and later speak VALSET).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pyubx2 import (
    GET,
    POLL,
    POLL_LAYER_RAM,
    SET,
    SET_LAYER_BBR,
    SET_LAYER_FLASH,
    SET_LAYER_RAM,
    TXN_NONE,
    UBXMessage,
    UBXReader,
    calc_checksum,
)
from pyubx2.exceptions import UBXMessageError, UBXParseError, UBXTypeError

from firmware_agent.errors import ConfigError

UBX_SYNC = b"\xb5\x62"
CFG_CLASS = 0x06
NMEA_CLASS = 0xF0
# Longest payload a reply of ours can have (MON-VER with a score of extensions is ~700).
MAX_PAYLOAD_BYTES = 4096

# UBX-CFG-NAV5 dynModel / CFG-NAVSPG-DYNMODEL values.
DYNAMIC_MODELS: dict[str, int] = {
    "portable": 0,
    "stationary": 2,
    "pedestrian": 3,
    "automotive": 4,
    "sea": 5,
    "airborne1g": 6,
    "airborne2g": 7,
    "airborne4g": 8,
    "wrist": 9,
}
_MODEL_NAMES = {value: name for name, value in DYNAMIC_MODELS.items()}

# The NMEA sentences the agent decodes (firmware_agent/gnss/sentences.py) and their
# UBX message ids in class 0xF0.
NMEA_IDS: dict[str, int] = {"GGA": 0x00, "GSA": 0x02, "RMC": 0x04, "VTG": 0x05}
AGENT_NMEA: tuple[str, ...] = ("RMC", "GGA", "GSA", "VTG")

# CFG-CFG saveMask: ioPort, msgConf, infMsg, navConf, rxmConf, senConf, rinvConf,
# antConf, logConf, ftsConf: every section an M8 has.
_SAVE_ALL = (0x1F1F).to_bytes(4, "little")
_NO_MASK = bytes(4)

# Hardware versions (MON-VER hwVersion) by generation.
_LEGACY_HARDWARE = frozenset({"00040005", "00040007", "00070000", "00080000"})
_VALSET_HARDWARE = frozenset({"00190000", "000A0000", "00200000"})
_FIRST_VALSET_PROTOCOL = 27.0


class Generation(StrEnum):
    """How a receiver is configured: legacy CFG messages or the configuration database."""

    LEGACY = "legacy"
    VALSET = "valset"


class Status(StrEnum):
    """What happened to a receiver, in :class:`ReceiverReport`."""

    CONFIGURED = "configured"  # every setting acknowledged and read back as asked
    PROBED = "probed"  # identified and read (probe_receiver, a dry run)
    FAILED = "failed"  # a setting was refused (NAK), unanswered, or read back wrong
    NOT_UBLOX = "not_ublox"  # NMEA flows but nothing answers UBX: configure it by hand
    SILENT = "silent"  # the port opened but nothing at all came from it
    UNAVAILABLE = "unavailable"  # the port could not be opened


Outcome = Literal["ack", "nak", "timeout"]


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """What to set: the navigation rate, the dynamic model, the NMEA output, saving."""

    rate_hz: float = 1.0
    dynamic_model: str = "automotive"
    save: bool = True
    nmea: tuple[str, ...] = AGENT_NMEA

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_hz) and 0.1 <= self.rate_hz <= 25.0):
            raise ConfigError(f"rate_hz: {self.rate_hz} is outside 0.1..25 Hz")
        if self.dynamic_model not in DYNAMIC_MODELS:
            raise ConfigError(
                f"dynamic_model: {self.dynamic_model!r} is not one of {', '.join(DYNAMIC_MODELS)}"
            )
        unknown = [name for name in self.nmea if name not in NMEA_IDS]
        if unknown:
            raise ConfigError(f"nmea: {', '.join(unknown)} not one of {', '.join(NMEA_IDS)}")

    @property
    def meas_period_ms(self) -> int:
        return round(1000.0 / self.rate_hz)


@dataclass(frozen=True, slots=True)
class ReceiverIdentity:
    """A receiver's UBX-MON-VER answer."""

    software: str
    hardware: str
    extensions: tuple[str, ...] = ()

    def _extension(self, key: str) -> str | None:
        prefix = f"{key}="
        return next((e[len(prefix) :] for e in self.extensions if e.startswith(prefix)), None)

    @property
    def model(self) -> str | None:
        """``NEO-M8N``, ``NEO-M9N``... when the receiver says (``MOD=``)."""
        return self._extension("MOD")

    @property
    def firmware(self) -> str:
        """``SPG 3.01`` (``FWVER=``), else the software version string."""
        return self._extension("FWVER") or self.software

    @property
    def protocol_version(self) -> float | None:
        text = self._extension("PROTVER")
        try:
            return float(text) if text is not None else None
        except ValueError:
            return None

    @property
    def generation(self) -> Generation:
        if self.hardware in _LEGACY_HARDWARE:
            return Generation.LEGACY
        if self.hardware in _VALSET_HARDWARE:
            return Generation.VALSET
        protocol = self.protocol_version
        if protocol is not None and protocol >= _FIRST_VALSET_PROTOCOL:
            return Generation.VALSET
        return Generation.LEGACY

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "firmware": self.firmware,
            "software": self.software,
            "hardware": self.hardware,
            "protocol_version": self.protocol_version,
            "generation": self.generation.value,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One set-up message, acknowledged by UBX-ACK-ACK (refused by ACK-NAK)."""

    name: str
    frame: bytes
    msg_class: int
    msg_id: int


@dataclass(frozen=True, slots=True)
class StepResult:
    name: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Readback:
    """The settings as the receiver reports them (None: not reported)."""

    rate_hz: float | None = None
    dynamic_model: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """What :func:`configure_receiver` / :func:`probe_receiver` found.

    ``ok`` is true when the receiver was configured (or probed) as asked; a receiver
    that is not u-blox is not ok but is no fault either (``status`` says which).
    """

    port: str
    status: Status
    identity: ReceiverIdentity | None = None
    rate_hz: float | None = None
    dynamic_model: str | None = None
    saved: bool = False
    steps: tuple[StepResult, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in (Status.CONFIGURED, Status.PROBED)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "status": self.status.value,
            "ok": self.ok,
            "receiver": None if self.identity is None else self.identity.to_json_dict(),
            "rate_hz": self.rate_hz,
            "dynamic_model": self.dynamic_model,
            "saved": self.saved,
            "steps": [{"name": s.name, "outcome": s.outcome} for s in self.steps],
            "problems": list(self.problems),
        }


# --- messages -------------------------------------------------------------------


def poll_version() -> bytes:
    return bytes(UBXMessage("MON", "MON-VER", POLL).serialize())


def setup_steps(generation: Generation, settings: ReceiverSettings) -> list[Step]:
    """The messages that apply ``settings``, in order, each waiting for its ACK."""
    model = DYNAMIC_MODELS[settings.dynamic_model]
    if generation is Generation.VALSET:
        data: list[tuple[int | str, object]] = [
            ("CFG_RATE_MEAS", settings.meas_period_ms),
            ("CFG_RATE_NAV", 1),
            ("CFG_NAVSPG_DYNMODEL", model),
        ]
        for name in settings.nmea:
            data += [(f"CFG_MSGOUT_NMEA_ID_{name}_UART1", 1), (f"CFG_MSGOUT_NMEA_ID_{name}_USB", 1)]
        layers = SET_LAYER_RAM
        if settings.save:
            layers |= SET_LAYER_BBR | SET_LAYER_FLASH
        frame = UBXMessage.config_set(layers, TXN_NONE, data).serialize()
        return [Step("CFG-VALSET", bytes(frame), CFG_CLASS, 0x8A)]
    steps = [
        Step(
            "CFG-RATE",
            _frame("CFG-RATE", measRate=settings.meas_period_ms, navRate=1, timeRef=1),
            CFG_CLASS,
            0x08,
        ),
        Step("CFG-NAV5", _frame("CFG-NAV5", dyn=1, dynModel=model), CFG_CLASS, 0x24),
    ]
    steps += [
        Step(
            f"CFG-MSG {name}",
            _frame("CFG-MSG", msgClass=NMEA_CLASS, msgID=NMEA_IDS[name], rateUART1=1, rateUSB=1),
            CFG_CLASS,
            0x01,
        )
        for name in settings.nmea
    ]
    if settings.save:
        steps.append(
            Step(
                "CFG-CFG save",
                _frame(
                    "CFG-CFG",
                    clearMask=_NO_MASK,
                    saveMask=_SAVE_ALL,
                    loadMask=_NO_MASK,
                    devBBR=1,
                    devFlash=1,
                ),
                CFG_CLASS,
                0x09,
            )
        )
    return steps


def readback_polls(generation: Generation) -> list[tuple[bytes, str]]:
    """The polls that read the settings back, each with the identity of its answer."""
    if generation is Generation.VALSET:
        keys: list[int | str] = ["CFG_RATE_MEAS", "CFG_RATE_NAV", "CFG_NAVSPG_DYNMODEL"]
        frame = UBXMessage.config_poll(POLL_LAYER_RAM, 0, keys).serialize()
        return [(bytes(frame), "CFG-VALGET")]
    return [
        (bytes(UBXMessage("CFG", "CFG-RATE", POLL).serialize()), "CFG-RATE"),
        (bytes(UBXMessage("CFG", "CFG-NAV5", POLL).serialize()), "CFG-NAV5"),
    ]


def _frame(identity: str, **fields: object) -> bytes:
    return bytes(UBXMessage("CFG", identity, SET, **fields).serialize())


# --- replies --------------------------------------------------------------------


def parse_frame(frame: bytes, *, msgmode: int = GET) -> UBXMessage | None:
    """A whole frame to a message; None for one pyubx2 cannot parse (unknown type)."""
    try:
        return UBXReader.parse(frame, msgmode=msgmode)
    except (UBXParseError, UBXMessageError, UBXTypeError, ValueError, KeyError):
        return None


def ack_outcome(message: UBXMessage, step: Step) -> Outcome | None:
    """``ack``/``nak`` if ``message`` answers ``step``, else None."""
    if message.identity not in ("ACK-ACK", "ACK-NAK"):
        return None
    if (message.clsID, message.msgID) != (step.msg_class, step.msg_id):
        return None
    return "ack" if message.identity == "ACK-ACK" else "nak"


def identity_of(message: UBXMessage) -> ReceiverIdentity:
    """A MON-VER reply to a :class:`ReceiverIdentity`."""
    payload = bytes(message.payload or b"")
    text = [payload[i : i + 30] for i in range(40, len(payload), 30)]
    return ReceiverIdentity(
        software=_c_string(payload[:30]),
        hardware=_c_string(payload[30:40]),
        extensions=tuple(s for s in (_c_string(chunk) for chunk in text) if s),
    )


def _c_string(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()


def readback_of(messages: list[UBXMessage]) -> Readback:
    """Rate and dynamic model from CFG-RATE + CFG-NAV5 or CFG-VALGET replies."""
    period_ms: int | None = None
    nav_rate = 1
    model: int | None = None
    for message in messages:
        if message.identity == "CFG-RATE":
            period_ms, nav_rate = int(message.measRate), int(message.navRate) or 1
        elif message.identity == "CFG-NAV5":
            model = int(message.dynModel)
        elif message.identity == "CFG-VALGET":
            period_ms = getattr(message, "CFG_RATE_MEAS", period_ms)
            nav_rate = int(getattr(message, "CFG_RATE_NAV", nav_rate)) or 1
            model = getattr(message, "CFG_NAVSPG_DYNMODEL", model)
    rate_hz = 1000.0 / (period_ms * nav_rate) if period_ms else None
    return Readback(
        rate_hz=None if rate_hz is None else round(rate_hz, 3),
        dynamic_model=None if model is None else _MODEL_NAMES.get(model, f"model {model}"),
    )


def verdict(
    port: str,
    identity: ReceiverIdentity,
    settings: ReceiverSettings | None,
    steps: list[StepResult],
    readback: Readback,
) -> ReceiverReport:
    """Pass or fail: every step acknowledged and the read-back equal to what was asked.

    ``settings`` None is a probe (nothing was set): it passes once identified.
    """
    problems = [
        f"{s.name}: {'refused (NAK)' if s.outcome == 'nak' else 'no answer'}"
        for s in steps
        if s.outcome != "ack"
    ]
    status = Status.PROBED
    if settings is not None:
        asked_hz = 1000.0 / settings.meas_period_ms
        if readback.rate_hz is None or abs(readback.rate_hz - asked_hz) > 0.01:
            problems.append(f"rate reads back as {readback.rate_hz} Hz, not {asked_hz:g}")
        if readback.dynamic_model != settings.dynamic_model:
            problems.append(
                f"dynamic model reads back as {readback.dynamic_model}, "
                f"not {settings.dynamic_model}"
            )
        status = Status.FAILED if problems else Status.CONFIGURED
    return ReceiverReport(
        port=port,
        status=status,
        identity=identity,
        rate_hz=readback.rate_hz,
        dynamic_model=readback.dynamic_model,
        saved=settings is not None and settings.save and not problems,
        steps=tuple(steps),
        problems=tuple(problems),
    )


class UbxFramer:
    """Cuts UBX frames out of a receiver's stream: ``feed(bytes) -> list[bytes]``.

    NMEA sentences and noise between frames are skipped; ``other_bytes`` counts them
    and ``nmea_seen`` says whether any looked like NMEA (a ``$`` followed by a
    talker), which tells an NMEA-only receiver from a silent port. A frame with a bad
    checksum is dropped (``bad_frames``) and the search resumes after its sync bytes.
    Never raises; memory stays bounded.
    """

    __slots__ = ("_buf", "bad_frames", "nmea_seen", "other_bytes")

    def __init__(self) -> None:
        self._buf = b""
        self.other_bytes = 0
        self.bad_frames = 0
        self.nmea_seen = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data
        frames: list[bytes] = []
        while True:
            start = buf.find(UBX_SYNC)
            if start < 0:
                # Keep a trailing 0xB5: it may be the first half of a sync.
                keep = 1 if buf.endswith(UBX_SYNC[:1]) else 0
                self._skip(buf[: len(buf) - keep])
                buf = buf[len(buf) - keep :]
                break
            self._skip(buf[:start])
            buf = buf[start:]
            if len(buf) < 6:
                break
            length = int.from_bytes(buf[4:6], "little")
            if length > MAX_PAYLOAD_BYTES:
                self.bad_frames += 1
                buf = buf[2:]
                continue
            if len(buf) < length + 8:
                break
            frame, rest = buf[: length + 8], buf[length + 8 :]
            if calc_checksum(frame[2:-2]) == frame[-2:]:
                frames.append(frame)
                buf = rest
            else:
                self.bad_frames += 1
                buf = buf[2:]
        self._buf = buf
        return frames

    def _skip(self, data: bytes) -> None:
        if not data:
            return
        self.other_bytes += len(data)
        if not self.nmea_seen and (b"$G" in data or b"$P" in data):
            self.nmea_seen = True
