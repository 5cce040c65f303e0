"""What the running agent tells systemd and ``fleet-agent doctor`` about itself.

:class:`ServiceState` is a snapshot: the last fix (mode, satellites, age), the uplink
(connected, records waiting for ingest's ack, age of the last ack). The service sends
it as systemd's ``STATUS=`` line (:func:`status_text`) and writes it, every
``STATE_EVERY_S`` and at stop, to ``service-state.json`` in the state directory,
where ``fleet-agent doctor`` (another process, which must not open the outbox the
agent holds) reads the uplink's side. :func:`run_service` runs the agent under
systemd's notification protocol (:mod:`firmware_agent.contract.sdnotify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_agent.contract.sdnotify import Notifier

if TYPE_CHECKING:
    from firmware_agent.agent import Agent

log = logging.getLogger(__name__)

STATE_FILE = "service-state.json"
# How often the state file is rewritten: often enough for doctor's "last ack" check,
# rare enough to spare an SD card (one small file, replaced whole).
STATE_EVERY_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceState:
    at: datetime
    fix_mode: str | None = None  # NO_FIX, FIX_2D, FIX_3D; None before the first fix
    sats_used: int | None = None
    fix_age_s: float | None = None
    connected: bool = False
    pending: int = 0
    last_ack_age_s: float | None = None
    last_ack_at: datetime | None = None
    # The agent's process, and whether this is the state it left when it stopped: a
    # doctor run after `systemctl stop` must not take it for a running agent's.
    pid: int | None = None
    stopped: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        out["last_ack_at"] = self.last_ack_at.isoformat() if self.last_ack_at else None
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ServiceState:
        """The state written by :func:`write_state`; ValueError/KeyError/TypeError if
        it is not one."""
        last = data.get("last_ack_at")
        return cls(
            at=_utc(datetime.fromisoformat(data["at"])),
            fix_mode=data.get("fix_mode"),
            sats_used=data.get("sats_used"),
            fix_age_s=data.get("fix_age_s"),
            connected=bool(data.get("connected")),
            pending=int(data.get("pending", 0)),
            last_ack_age_s=data.get("last_ack_age_s"),
            last_ack_at=_utc(datetime.fromisoformat(last)) if last else None,
            pid=data.get("pid"),
            stopped=bool(data.get("stopped", False)),
        )

    @property
    def process_alive(self) -> bool:
        """Whether the agent that wrote this may still run: not stopped, and its process
        (when the state names it) still there. A SIGKILLed agent leaves no word of it:
        its pid is gone (or, rarely, reused: then only the state's age tells)."""
        if self.stopped:
            return False
        if self.pid is None:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone")
    return when.astimezone(UTC)


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 1)


def status_text(state: ServiceState) -> str:
    """One line for ``systemctl status``: fix state, then uplink state."""
    if state.fix_mode is None:
        fix = "no fix yet"
    else:
        fix = f"fix {state.fix_mode.removeprefix('FIX_')}"
        if state.sats_used is not None:
            fix += f", {state.sats_used} sats"
        if state.fix_age_s is not None:
            fix += f", {state.fix_age_s:.0f} s ago"
    uplink = "connected" if state.connected else "not connected"
    ack = (
        "no ack yet"
        if state.last_ack_age_s is None
        else f"last ack {state.last_ack_age_s:.0f} s ago"
    )
    return f"{fix}; uplink {uplink}, {state.pending} pending, {ack}"


async def snapshot(agent: Agent, now: datetime) -> ServiceState:
    """The agent's state, taken at ``now`` (the wall clock: when doctor reads it, how
    stale it is); the ages by the agent's own clock, which times its fixes and acks (a
    file's fixes carry their own time). The outbox is counted off the event loop."""
    fix = agent.last_fix
    agent_now = agent.clock.now()
    uplink = agent.uplink
    pending = 0
    if uplink is not None:
        with contextlib.suppress(Exception):  # a closed or failing outbox: 0, not a crash
            pending = sum((await uplink.outbox.counts()).values())
    last_ack = uplink.last_ack_at if uplink is not None else None
    return ServiceState(
        at=now,
        fix_mode=fix.mode.name if fix is not None else None,
        sats_used=fix.sats_used if fix is not None else None,
        fix_age_s=_age_s(agent_now, agent.last_fix_at),
        connected=uplink is not None and uplink.connected.is_set(),
        pending=pending,
        last_ack_age_s=_age_s(agent_now, last_ack),
        last_ack_at=last_ack,
        pid=os.getpid(),
    )


def write_state(path: Path, state: ServiceState) -> None:
    """Replace ``path`` with ``state`` (written beside it, then renamed: never half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.to_json_dict()) + "\n", "utf-8")
    os.replace(tmp, path)


def read_state(path: Path) -> ServiceState:
    """The state in ``path``: OSError if unreadable, ValueError if not a state."""
    data = json.loads(path.read_text("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a service state (not an object)")  # noqa: TRY004 (bad data, one error for callers)
    try:
        return ServiceState.from_json_dict(data)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a service state ({err!r})") from err


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _report(
    agent: Agent,
    notifier: Notifier,
    *,
    clock: Callable[[], datetime],
    every_s: float,
) -> None:
    """READY=1 once the agent started, then the state file every ``every_s``; the
    watchdog and status lines run beside it (:meth:`Notifier.keep_alive`)."""
    await agent.started.wait()
    path = agent.config.state_dir / STATE_FILE
    state = await snapshot(agent, clock())
    notifier.ready(status_text(state))
    log.info("service ready: %s", status_text(state))
    latest = [state]

    async def keep_alive() -> None:
        await notifier.keep_alive(lambda: status_text(latest[0]))

    async def save(state: ServiceState) -> None:
        try:
            await asyncio.to_thread(write_state, path, state)
        except OSError as err:
            log.debug("cannot write %s: %s", path, err)

    try:
        async with asyncio.TaskGroup() as tg:
            if notifier.enabled:
                tg.create_task(keep_alive(), name="sd-notify")
            written = -float("inf")
            loop = asyncio.get_running_loop()
            while True:
                latest[0] = state
                if loop.time() - written >= every_s:
                    await save(state)
                    written = loop.time()
                await asyncio.sleep(1.0)
                state = await snapshot(agent, clock())
    finally:
        # The state it leaves, marked as such: taken now (a short run may have ended
        # since the last one, acks and all). The outbox is closed by now: what it held
        # is what the agent counted as it closed it (else the last count taken).
        last = latest[0]
        with contextlib.suppress(Exception):
            last = await snapshot(agent, clock())
        left = latest[0].pending if agent.pending_at_stop is None else agent.pending_at_stop
        await save(dataclasses.replace(last, pending=left, stopped=True))


async def run_service(
    agent: Agent,
    notifier: Notifier,
    *,
    clock: Callable[[], datetime] = _utcnow,
    state_every_s: float = STATE_EVERY_S,
) -> None:
    """``await agent.run()`` with systemd told about it: READY=1 once it started,
    WATCHDOG=1 and STATUS= while it runs, STOPPING=1 when it ends or is cancelled."""
    reporter = asyncio.create_task(
        _report(agent, notifier, clock=clock, every_s=state_every_s), name="service-state"
    )
    try:
        await agent.run()
    finally:
        notifier.stopping()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reporter
