"""Set up (or just identify) a u-blox receiver: the calls provision and doctor make.

    report = await configure_receiver("/dev/fleet/gnss", ReceiverSettings(rate_hz=5))
    report = await probe_receiver("/dev/fleet/gnss")

Both are coroutines (run them with ``asyncio.run`` from synchronous code); both take
``baudrate=9600`` and ``timeout_s=1.0`` (the wait for each answer) as keywords, and
return a :class:`~firmware_agent.gnss.ubx.ReceiverReport`: ``status`` (configured,
probed, failed, not_ublox, silent, unavailable), ``ok``, ``identity`` (model, firmware,
generation), the ``rate_hz`` and ``dynamic_model`` read back from the receiver,
``saved``, each step's ack/nak/timeout and ``problems`` in words. They never raise for
what a receiver does or fails to do: a port that will not open is ``unavailable``, one
that sends NMEA but no UBX is ``not_ublox`` (set it up by hand, nothing is stopped), a
NAK is ``failed`` with the step named. The agent must not be reading the port at the
same time (it is opened exclusively).

``configure_receiver``: MON-VER poll (twice, a receiver busy with output may miss the
first), the generation's set-up messages (:func:`~firmware_agent.gnss.ubx.setup_steps`),
each waited for its ACK; then the read-back polls, and the verdict. ``probe_receiver``:
MON-VER and the read-back only; nothing is changed.
"""

from __future__ import annotations

from collections.abc import Callable

from pyubx2 import UBXMessage

from firmware_agent.errors import DeviceUnavailableError
from firmware_agent.gnss.ubx import (
    Generation,
    Readback,
    ReceiverIdentity,
    ReceiverReport,
    ReceiverSettings,
    Status,
    Step,
    StepResult,
    ack_outcome,
    identity_of,
    poll_version,
    readback_of,
    readback_polls,
    setup_steps,
    verdict,
)
from firmware_agent.gnss.ubx_link import UbxLink

VERSION_TRIES = 2
NMEA_LISTEN_S = 1.5  # longer than a 1 Hz receiver's quiet gap


async def configure_receiver(
    port: str,
    settings: ReceiverSettings,
    *,
    baudrate: int = 9600,
    timeout_s: float = 1.0,
) -> ReceiverReport:
    """Apply ``settings`` to the u-blox receiver on ``port`` and read them back."""
    return await _session(port, settings, baudrate=baudrate, timeout_s=timeout_s)


async def probe_receiver(
    port: str, *, baudrate: int = 9600, timeout_s: float = 1.0
) -> ReceiverReport:
    """Identify the receiver on ``port`` and read its rate and dynamic model."""
    return await _session(port, None, baudrate=baudrate, timeout_s=timeout_s)


async def _session(
    port: str, settings: ReceiverSettings | None, *, baudrate: int, timeout_s: float
) -> ReceiverReport:
    try:
        async with UbxLink(port, baudrate=baudrate) as link:
            identity = await _identify(link, timeout_s)
            if identity is None:
                # A 1 Hz receiver may not have spoken yet: give it one more epoch to
                # tell a receiver that is not u-blox from a silent port.
                await link.wait_for_nmea(NMEA_LISTEN_S)
                return _unidentified(port, link)
            steps: list[StepResult] = []
            if settings is not None:
                steps = await _apply(link, identity.generation, settings, timeout_s)
            readback = await _read_back(link, identity.generation, timeout_s)
            return verdict(port, identity, settings, steps, readback)
    except DeviceUnavailableError as err:
        return ReceiverReport(port=port, status=Status.UNAVAILABLE, problems=(str(err),))


async def _identify(link: UbxLink, timeout_s: float) -> ReceiverIdentity | None:
    for _ in range(VERSION_TRIES):
        reply = await link.request(poll_version(), _is("MON-VER"), timeout_s)
        if reply is not None:
            return identity_of(reply)
    return None


def _unidentified(port: str, link: UbxLink) -> ReceiverReport:
    if link.framer.nmea_seen:
        return ReceiverReport(
            port=port,
            status=Status.NOT_UBLOX,
            problems=(
                "NMEA but no answer to UBX-MON-VER: not a u-blox receiver (or UBX "
                "input is off); set its rate and dynamic model by hand",
            ),
        )
    what = "nothing at all" if link.bytes_read == 0 else "neither NMEA nor UBX"
    return ReceiverReport(
        port=port,
        status=Status.SILENT,
        problems=(f"{what} from {port} (receiver off, wrong port or wrong baud rate)",),
    )


async def _apply(
    link: UbxLink, generation: Generation, settings: ReceiverSettings, timeout_s: float
) -> list[StepResult]:
    results: list[StepResult] = []
    for step in setup_steps(generation, settings):
        reply = await link.request(step.frame, _answers(step), timeout_s)
        outcome = None if reply is None else ack_outcome(reply, step)
        results.append(StepResult(step.name, outcome or "timeout"))
    return results


async def _read_back(link: UbxLink, generation: Generation, timeout_s: float) -> Readback:
    replies: list[UBXMessage] = []
    for frame, identity in readback_polls(generation):
        reply = await link.request(frame, _is(identity), timeout_s)
        if reply is not None:
            replies.append(reply)
    return readback_of(replies)


def _answers(step: Step) -> Callable[[UBXMessage], bool]:
    return lambda message: ack_outcome(message, step) is not None


def _is(identity: str) -> Callable[[UBXMessage], bool]:
    return lambda message: bool(message.identity == identity)
