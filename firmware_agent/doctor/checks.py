"""The doctor's judgements: what was observed -> pass, warn or fail, with a hint.

Pure: every function takes what a probe observed (and the time) and returns
:class:`Check` results; nothing here opens a device or a socket. The thresholds are
module constants, documented in docs/configuration.md.
"""

from __future__ import annotations

import enum
import json
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_agent.contract.fix import Fix, FixMode

if TYPE_CHECKING:
    from firmware_agent.gnss.ubx import ReceiverReport

# A fix older than this (the receiver sends one a second) is stale.
FIX_MAX_AGE_S = 5.0
# Satellites used: fewer than this is a weak fix (warn); none with a fix is impossible.
SATS_WARN_BELOW = 6
HDOP_WARN_ABOVE = 5.0
# Receiver clock against the system clock: the records' times come from the system
# clock (NTP) and the receiver's, so they must agree.
CLOCK_WARN_S = 2.0
CLOCK_FAIL_S = 30.0
# Last ack from ingest: older than this while records wait = ingest is not acknowledging.
ACK_WARN_S = 300.0
ACK_FAIL_S = 3600.0
# The service state file is rewritten every 30 s while the agent runs.
STATE_STALE_S = 120.0
# Outbox against its budget: past these fractions telemetry is being (or soon) thinned.
OUTBOX_WARN_FRACTION = 0.5
OUTBOX_FAIL_FRACTION = 0.9
# Free space in the state directory's file system.
DISK_WARN_BYTES = 500 * 1024 * 1024
DISK_FAIL_BYTES = 50 * 1024 * 1024


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: ``name`` (stable, for scripts), ``status``, what was
    found (``summary``) and what to do about it (``hint``, empty on pass)."""

    name: str
    status: Status
    summary: str
    hint: str = ""

    def to_json_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status.value,
            "summary": self.summary,
            "hint": self.hint,
        }


def passed(name: str, summary: str) -> Check:
    return Check(name, Status.PASS, summary)


def warned(name: str, summary: str, hint: str) -> Check:
    return Check(name, Status.WARN, summary, hint)


def failed(name: str, summary: str, hint: str) -> Check:
    return Check(name, Status.FAIL, summary, hint)


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 when a check failed."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


# -- settings -----------------------------------------------------------------------


def config_check(source: str, error: str | None) -> Check:
    if error is not None:
        return failed("config", error, "fix the setting named (`fleet-agent config` shows all)")
    return passed("config", f"settings valid ({source})")


# -- GNSS ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GnssObservation:
    """What reading the receiver for a few seconds gave: ``port`` (None: not a serial
    receiver), ``exists``/``open_error`` for the device, the fixes with the system
    time each arrived at, and the bytes read."""

    port: str | None
    exists: bool
    open_error: str | None
    fixes: tuple[tuple[Fix, datetime], ...] = ()
    bytes_read: int = 0
    listened_s: float = 0.0


def gnss_checks(obs: GnssObservation, now: datetime) -> list[Check]:
    if obs.port is None:
        return [warned("gnss.port", "no serial receiver configured (file or TCP input)", "")]
    if not obs.exists:
        return [
            failed(
                "gnss.port",
                f"{obs.port} does not exist",
                "plug the receiver in; check hw/udev rules (ls -l /dev/fleet/) and the UART "
                "overlay in config.txt",
            )
        ]
    if obs.open_error is not None:
        return [
            failed(
                "gnss.port",
                f"{obs.port} cannot be opened: {obs.open_error}",
                "is fleet-agent running (it holds the port: stop it, or read `systemctl "
                "status fleet-agent`)? is this user in the dialout group?",
            )
        ]
    out = [
        passed("gnss.port", f"{obs.port} opened, {obs.bytes_read} bytes in {obs.listened_s:.0f} s")
    ]
    if obs.bytes_read == 0:
        out.append(
            failed(
                "gnss.fix",
                f"nothing received in {obs.listened_s:.0f} s",
                "wrong baud rate (gnss.baud), receiver unpowered, TX/RX swapped, or on a "
                "Pi 4 the UART is the Bluetooth one (hw/ config.txt fragment)",
            )
        )
        return out
    if not obs.fixes:
        out.append(
            failed(
                "gnss.fix",
                f"{obs.bytes_read} bytes but no NMEA epoch decoded",
                "wrong baud rate (gnss.baud) or the receiver speaks UBX only",
            )
        )
        return out
    fix, arrived = obs.fixes[-1]
    with_position = [f for f, _ in obs.fixes if f.lat is not None and f.mode >= FixMode.FIX_2D]
    age_s = (now - arrived).total_seconds()
    if not with_position:
        out.append(
            warned(
                "gnss.fix",
                f"receiver talks, no position yet ({fix.mode.name})",
                "give it open sky; a cold start takes up to a minute or more",
            )
        )
    else:
        last = with_position[-1]
        text = (
            f"{last.mode.name.removeprefix('FIX_')} fix, quality {last.quality}, hdop {last.hdop}"
        )
        if age_s > FIX_MAX_AGE_S:
            out.append(failed("gnss.fix", f"{text}, {age_s:.0f} s old", "the receiver stopped"))
        elif last.mode is FixMode.FIX_2D or (last.hdop is not None and last.hdop > HDOP_WARN_ABOVE):
            out.append(
                warned("gnss.fix", text, "weak geometry: check the antenna's view of the sky")
            )
        else:
            out.append(passed("gnss.fix", text))
    sats = max((f.sats_used for f, _ in obs.fixes if f.sats_used is not None), default=None)
    if sats is None:
        out.append(warned("gnss.satellites", "the receiver reports no satellite count", ""))
    elif sats < SATS_WARN_BELOW:
        out.append(
            warned("gnss.satellites", f"{sats} used", "antenna placement: roof, clear of metal")
        )
    else:
        out.append(passed("gnss.satellites", f"{sats} used"))
    out.append(_clock_check(obs.fixes))
    return out


def gnss_from_agent(
    port: str, fix_mode: str | None, sats_used: int | None, fix_age_s: float | None
) -> list[Check]:
    """The receiver as the running agent reads it (it holds the port exclusively)."""
    held = f"{port} held by the running agent"
    out = [passed("gnss.port", held)]
    if fix_mode is None or fix_age_s is None:
        out.append(failed("gnss.fix", "the agent has had no fix yet", "see gnss.port; open sky"))
    elif fix_age_s > FIX_MAX_AGE_S:
        out.append(
            failed("gnss.fix", f"last fix {fix_age_s:.0f} s old", "the receiver stopped talking")
        )
    elif fix_mode not in {"FIX_2D", "FIX_3D"}:
        out.append(warned("gnss.fix", f"receiver talks, no position ({fix_mode})", "open sky"))
    else:
        out.append(
            passed("gnss.fix", f"{fix_mode.removeprefix('FIX_')} fix, {fix_age_s:.0f} s old")
        )
    if sats_used is not None and sats_used < SATS_WARN_BELOW:
        out.append(warned("gnss.satellites", f"{sats_used} used", "antenna placement"))
    elif sats_used is not None:
        out.append(passed("gnss.satellites", f"{sats_used} used"))
    out.append(
        warned(
            "gnss.clock",
            "not compared while the agent holds the receiver",
            "stop the agent and run doctor again to compare clocks",
        )
    )
    return out


def receiver_check(report: ReceiverReport, policy: str, rate_hz: float) -> Check:
    """The receiver's own set-up, from a UBX probe (``policy``: gnss.receiver, "auto"
    or "ublox"): a u-blox at ``rate_hz`` with the automotive model passes; one set up
    otherwise warns (it works, with worse fixes or a rate the agent does not expect); a
    receiver that is not u-blox passes under "auto" and fails under "ublox"."""
    name = "gnss.receiver"
    status = report.status.value
    configure = f"fleet-agent gnss configure --port {report.port} --rate-hz {rate_hz:g}"
    if status in ("not_ublox", "silent"):
        why = report.problems[0] if report.problems else status
        if policy == "ublox":
            return failed(name, f"gnss.receiver is 'ublox' but: {why}", "check the receiver "
                          "model and its UBX input, or set gnss.receiver = 'auto'")  # fmt: skip
        return passed(name, "not a u-blox (no UBX answer): its own set-up is not checked")
    if status == "unavailable":
        why = report.problems[0] if report.problems else "unavailable"
        return warned(name, f"not probed: {why}", "see gnss.port")
    if report.identity is None:
        why = "; ".join(report.problems) or status
        return warned(name, f"the UBX probe failed: {why}", configure)
    who = f"u-blox {report.identity.model or report.identity.hardware} ({report.identity.firmware})"
    rate = "unknown" if report.rate_hz is None else f"{report.rate_hz:g} Hz"
    model = report.dynamic_model or "unknown"
    if (
        report.rate_hz is not None
        and abs(report.rate_hz - rate_hz) < 0.01
        and report.dynamic_model == "automotive"
    ):
        return passed(name, f"{who}: {rate}, automotive dynamic model")
    return warned(
        name,
        f"{who}: {rate}, {model} dynamic model; gnss.rate_hz is {rate_hz:g} Hz, automotive",
        f"{configure} (or `fleet-agent provision` does it)",
    )


def _clock_check(fixes: Sequence[tuple[Fix, datetime]]) -> Check:
    offsets = [(arrived - f.time).total_seconds() for f, arrived in fixes if f.time is not None]
    if not offsets:
        return warned("gnss.clock", "no dated fix to compare clocks with", "")
    offset = sorted(offsets)[len(offsets) // 2]  # the median: one late line is no drift
    text = f"system clock {offset:+.1f} s from the receiver's"
    hint = "check NTP (timedatectl); a van offline since boot has only the receiver's time"
    if abs(offset) > CLOCK_FAIL_S:
        return failed("gnss.clock", text, hint)
    if abs(offset) > CLOCK_WARN_S:
        return warned("gnss.clock", text, hint)
    return passed("gnss.clock", text)


# -- scanners, feedback -------------------------------------------------------------


def device_check(name: str, what: str, error: str | None, hint: str) -> Check:
    """A device that should open: ``error`` None when it did."""
    if error is None:
        return passed(name, f"{what} opened")
    return failed(name, f"{what}: {error}", hint)


# -- broker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerProbe:
    """Connecting with the van's settings: ``address``, ``tls`` (TLS in use),
    ``error`` (None when connected), and the SUBACK of each topic probed (reason code
    value, < 128 granted)."""

    address: str
    tls: bool
    error: str | None
    subscribed: tuple[tuple[str, int], ...] = ()
    retained: tuple[str, ...] = ()
    # The PUBACK reason code of an empty publish to the van's own ack topic (None: no
    # answer): the broker must refuse it (>= 128), only ingest may send acks.
    own_ack: int | None = None


def broker_checks(probe: BrokerProbe) -> list[Check]:
    via = "TLS with this van's certificate" if probe.tls else "plain TCP (no TLS)"
    if probe.error is not None:
        return [
            failed(
                "broker.connect",
                f"{probe.address} over {via}: {probe.error}",
                "network up? broker address and port (mqtt.host/port)? certificate revoked, "
                "expired or from another CA (re-provision the van)?",
            )
        ]
    out = [
        passed("broker.connect", f"{probe.address} over {via}")
        if probe.tls
        else warned(
            "broker.connect",
            f"{probe.address} over {via}",
            "records and PODs cross the network in clear: set mqtt.tls_ca (provision)",
        )
    ]
    refused = [topic for topic, code in probe.subscribed if code >= 128]
    if refused:
        out.append(
            failed(
                "broker.acl",
                f"subscribe refused on {', '.join(refused)}",
                "the broker's ACL does not know this van: is the certificate's CN the device id?",
            )
        )
    elif probe.own_ack is not None and probe.own_ack < 128:
        out.append(
            failed(
                "broker.acl",
                "the broker took a publish to this van's own ack topic: anyone with a van's "
                "certificate could make it delete records ingest never stored",
                "load the fleet's ACL on the vans' listener (docs/mosquitto/fleet.acl)",
            )
        )
    else:
        heard = f"; retained {', '.join(probe.retained)} delivered" if probe.retained else ""
        topics = ", ".join(topic for topic, _ in probe.subscribed)
        forged = (
            "; publishing to its own ack topic refused"
            if probe.own_ack is not None
            else "; no answer to the forged-ack probe"
        )
        out.append(passed("broker.acl", f"subscribe granted on {topics}{heard}{forged}"))
    return out


def agent_running(state_at: datetime | None, now: datetime) -> bool:
    """Whether the agent's service state is fresh: the agent runs now."""
    return state_at is not None and (now - state_at).total_seconds() <= STATE_STALE_S


def broker_from_agent(connected: bool, address: str, tls: bool) -> list[Check]:
    """The broker as the running agent sees it. Doctor does not connect itself then:
    the vans' listener forces the client id to the certificate's CN, so a second
    connection as this van would push the agent off the broker."""
    via = "TLS" if tls else "plain TCP"
    if connected:
        return [
            passed("broker.connect", f"the running agent is connected to {address} over {via}"),
            passed("broker.acl", "not probed while the agent runs (its uplink works)"),
        ]
    return [
        failed(
            "broker.connect",
            f"the running agent is not connected to {address} over {via}",
            "journalctl -u fleet-agent: refused certificate (revoked? expired?), address, "
            "network; or stop the agent and run doctor to probe the broker itself",
        )
    ]


# -- the running agent's state ------------------------------------------------------


def ack_check(
    state_at: datetime | None,
    last_ack_at: datetime | None,
    pending: int | None,
    now: datetime,
    error: str | None = None,
) -> Check:
    """Ingest acknowledging, from the agent's service state (written every 30 s)."""
    if error is not None or state_at is None:
        return warned(
            "ingest.ack",
            f"no service state from the agent ({error or 'never written'})",
            "start the agent (systemctl start fleet-agent) and run doctor again",
        )
    stale_s = (now - state_at).total_seconds()
    if stale_s > STATE_STALE_S:
        return warned(
            "ingest.ack",
            f"the agent's state is {stale_s:.0f} s old: is fleet-agent running?",
            "systemctl status fleet-agent",
        )
    if last_ack_at is None:
        if pending:
            return failed(
                "ingest.ack",
                f"no ack from ingest since the agent started, {pending} records waiting",
                "is the van enrolled in ingest (fleet-ingest device list)? is ingest running?",
            )
        return warned("ingest.ack", "no ack yet (nothing sent)", "")
    age_s = (now - last_ack_at).total_seconds()
    text = f"last ack {age_s:.0f} s ago, {pending or 0} records waiting"
    if pending and age_s > ACK_FAIL_S:
        return failed("ingest.ack", text, "ingest stopped acknowledging: check it and the broker")
    if pending and age_s > ACK_WARN_S:
        return warned("ingest.ack", text, "ingest is slow or the link is down")
    return passed("ingest.ack", text)


def outbox_check(used_bytes: int | None, budget_bytes: int, error: str | None = None) -> Check:
    if error is not None or used_bytes is None:
        return warned("outbox.size", f"outbox not read ({error or 'absent'})", "")
    fraction = used_bytes / budget_bytes
    text = f"{used_bytes / 1e6:.1f} MB of {budget_bytes / 1e6:.0f} MB budget ({fraction:.0%})"
    if fraction >= OUTBOX_FAIL_FRACTION:
        return failed("outbox.size", text, "records are not leaving: see ingest.ack and broker")
    if fraction >= OUTBOX_WARN_FRACTION:
        return warned("outbox.size", text, "a backlog: telemetry is thinned past the budget")
    return passed("outbox.size", text)


def disk_check(path: Path, free_bytes: int) -> Check:
    text = f"{free_bytes / 1e6:.0f} MB free on {path}"
    if free_bytes < DISK_FAIL_BYTES:
        return failed("disk", text, "free space: journal (journalctl --vacuum-size), old logs")
    if free_bytes < DISK_WARN_BYTES:
        return warned("disk", text, "low: the outbox needs room during an outage")
    return passed("disk", text)


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A secret file as found: ``mode`` (st_mode), ``uid``; None when absent."""

    label: str
    path: Path
    mode: int | None
    uid: int | None
    required: bool = True


def key_checks(keys: Sequence[KeyFile], service_uid: int) -> list[Check]:
    """Each secret: present, no access for group or others (0600 or 0400), owned by
    the service's user (or root: systemd hands root's files over as credentials)."""
    out = []
    for key in keys:
        name = f"keys.{key.label}"
        if key.mode is None or key.uid is None:
            if key.required:
                out.append(failed(name, f"{key.path} missing", "provision the van"))
            else:
                out.append(warned(name, f"{key.path} not there yet", "created by the first run"))
            continue
        perms = stat.S_IMODE(key.mode)
        text = f"{key.path} mode {perms:04o}, owner uid {key.uid}"
        if perms & 0o077:
            out.append(failed(name, text, f"chmod 600 {key.path}"))
        elif key.uid not in {service_uid, 0}:
            out.append(
                failed(name, text, f"chown the file to the service's user (uid {service_uid})")
            )
        else:
            out.append(passed(name, text))
    return out


def eta_check(
    enabled: bool, model_version: str | None, backend: str | None, unavailable: str | None
) -> Check:
    if not enabled:
        return passed("eta", "ETAs off (eta.enabled = false)")
    if model_version is None:
        return warned(
            "eta",
            f"baseline ETAs: {unavailable or 'no model'}",
            "install the van extra (ai-edge-litert or tflite-runtime) or a valid model",
        )
    return passed("eta", f"model {model_version} on {backend}")


# -- output -------------------------------------------------------------------------


def render_table(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status.value.upper():4}  {c.name:{width}}  {c.summary}")
        if c.hint and c.status is not Status.PASS:
            lines.append(f"{'':4}  {'':{width}}  -> {c.hint}")
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    lines.append(
        f"{counts[Status.PASS]} pass, {counts[Status.WARN]} warn, {counts[Status.FAIL]} fail"
    )
    return "\n".join(lines) + "\n"


def render_json(checks: Sequence[Check], extra: dict[str, Any] | None = None) -> str:
    return (
        json.dumps(
            {
                "ok": exit_code(checks) == 0,
                "checks": [c.to_json_dict() for c in checks],
                **(extra or {}),
            },
            indent=2,
        )
        + "\n"
    )
