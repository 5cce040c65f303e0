"""systemd's notification protocol (issue 16): ``fleet-agent run`` and ``fleet-ingest
serve`` as ``Type=notify`` services with a watchdog.

A real AF_UNIX datagram socket stands in for systemd (``$NOTIFY_SOCKET``): the agent,
run as installed on a simulated day, says ``READY=1`` with a ``STATUS=`` line, pings
``WATCHDOG=1`` at half ``$WATCHDOG_USEC``, stops pinging while its process is frozen
(SIGSTOP: what a hung event loop looks like from outside) and pings again after
SIGCONT, and says ``STOPPING=1`` on SIGTERM. Ingest the same.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_agent.contract.sdnotify import (
    STATUS_MAX_CHARS,
    Notifier,
    socket_address,
    status_line,
    watchdog_interval_s,
)
from firmware_agent.service_state import ServiceState, read_state, status_text, write_state
from tests.broker import free_port
from tests.uplinkday import Day, agent_command, make_day, prepare_agent_state

BIN = Path(sys.executable).parent


# -- the pure parts -----------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 7) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "7"}, 7) == 0.2
    assert watchdog_interval_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "-5"}, 7) is None
    assert watchdog_interval_s({}, 7) is None


def test_abstract_socket_names_and_status_lines() -> None:
    assert socket_address("@fleet/notify") == "\0fleet/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert status_line("a\nb  c") == "a b c"
    assert len(status_line("x" * 1000)) == STATUS_MAX_CHARS


def test_status_text_says_fix_and_uplink() -> None:
    now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    assert status_text(ServiceState(at=now)) == (
        "no fix yet; uplink not connected, 0 pending, no ack yet"
    )
    state = ServiceState(
        at=now,
        fix_mode="FIX_3D",
        sats_used=9,
        fix_age_s=1.2,
        connected=True,
        pending=12,
        last_ack_age_s=3.0,
    )
    assert (
        status_text(state)
        == "fix 3D, 9 sats, 1 s ago; uplink connected, 12 pending, last ack 3 s ago"
    )


def test_service_state_round_trips_through_its_file(tmp_path: Path) -> None:
    now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    state = ServiceState(at=now, connected=True, pending=3, last_ack_at=now, last_ack_age_s=0.0)
    path = tmp_path / "service-state.json"
    write_state(path, state)
    assert read_state(path) == state
    path.write_text("[]")
    with pytest.raises(ValueError, match="not a service state"):
        read_state(path)


def test_a_state_is_alive_while_its_process_runs_and_has_not_stopped(tmp_path: Path) -> None:
    now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    assert ServiceState(at=now, pid=os.getpid()).process_alive
    assert ServiceState(at=now).process_alive  # written before states named their pid
    assert not ServiceState(at=now, pid=os.getpid(), stopped=True).process_alive
    child = subprocess.Popen(["true"])  # a pid that has exited (and been reaped)
    child.wait()
    assert not ServiceState(at=now, pid=child.pid).process_alive
    path = tmp_path / "service-state.json"
    write_state(path, ServiceState(at=now, pid=child.pid, stopped=True))
    assert read_state(path) == ServiceState(at=now, pid=child.pid, stopped=True)


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.1)
    yield sock
    sock.close()


def test_notifier_sends_datagrams_and_is_quiet_without_a_socket(
    systemd_socket: socket.socket,
) -> None:
    with Notifier.from_environ({}) as absent:
        assert not absent.enabled
        assert absent.send("READY=1") is False
    with Notifier(systemd_socket.getsockname()) as notifier:
        assert notifier.ready("up")
        assert systemd_socket.recv(4096) == b"READY=1\nSTATUS=up"
        assert notifier.stopping()
        assert systemd_socket.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    # systemd gone: the service goes on.
    gone = Notifier("@no-such-socket-" + str(os.getpid()))
    assert gone.send("WATCHDOG=1") is False
    gone.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"@fleet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(socket_address(name))
        sock.settimeout(1)
        with Notifier(name) as notifier:
            notifier.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"


# -- the services, as installed --------------------------------------------------------


class Collector:
    """What the services sent to the stand-in systemd socket, with arrival times."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> list[tuple[float, str]]:
        """Receive for ``seconds``; what arrived in that time."""
        start = len(self.got)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))
        return self.got[start:]

    def until(self, field: str, timeout_s: float) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for _, message in self.drain(0.1):
                if field in message.split("\n"):
                    return message
        raise AssertionError(f"no {field} in {timeout_s} s: {self.got[-5:]}")


def _pings(messages: list[tuple[float, str]]) -> int:
    return sum("WATCHDOG=1" in m.split("\n") for _, m in messages)


def _watch_a_frozen_service(proc: subprocess.Popen[bytes], collector: Collector) -> None:
    """Pings flow, stop while the process is frozen, flow again after it thaws. (Counts
    with slack: a loaded 2-CPU machine delays pings, it cannot make a frozen one send.)"""
    assert _pings(collector.drain(2.0)) >= 3  # every 0.2 s: ~10
    proc.send_signal(signal.SIGSTOP)
    try:
        collector.drain(0.3)  # what was already queued
        assert _pings(collector.drain(1.5)) == 0
    finally:
        proc.send_signal(signal.SIGCONT)
    collector.until("WATCHDOG=1", timeout_s=10)
    assert _pings(collector.drain(2.0)) >= 3


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    return make_day(tmp_path_factory.mktemp("notifyday"), stops=2, hours=0.05)


@pytest.mark.slow
def test_agent_is_a_notify_service_with_a_watchdog(
    day: Day, tmp_path: Path, systemd_socket: socket.socket
) -> None:
    state = tmp_path / "van"
    prepare_agent_state(state, day)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": systemd_socket.getsockname(),
        "WATCHDOG_USEC": "400000",
    }
    log_path = tmp_path / "agent.log"
    collector = Collector(systemd_socket)
    # No broker: the agent runs, keeps its records and retries the link. Real time, so
    # it is still playing when the test freezes it.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            agent_command(state, day, free_port(), speed=1), env=env, stdout=log, stderr=log
        )
        try:
            ready = collector.until("READY=1", timeout_s=60)
            assert any(line.startswith("STATUS=") for line in ready.split("\n")), ready
            _watch_a_frozen_service(proc, collector)
            statuses = [
                line
                for _, m in collector.got
                for line in m.split("\n")
                if line.startswith("STATUS=")
            ]
            assert any("uplink not connected" in s and " pending" in s for s in statuses), statuses
            assert any(s.startswith("STATUS=fix ") for s in statuses), statuses
            proc.send_signal(signal.SIGTERM)
            collector.until("STOPPING=1", timeout_s=30)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    state_file = read_state(state / "service-state.json")
    assert not state_file.connected
    assert state_file.pending > 0
    # The state it left says so: doctor right after a stop does not take it for a
    # running agent's.
    assert state_file.stopped
    assert state_file.pid == proc.pid
    assert not state_file.process_alive
    assert "Traceback" not in log_path.read_text()


@pytest.mark.slow
def test_ingest_is_a_notify_service_with_a_watchdog(
    tmp_path: Path, systemd_socket: socket.socket
) -> None:
    env = {
        **os.environ,
        "NOTIFY_SOCKET": systemd_socket.getsockname(),
        "WATCHDOG_USEC": "400000",
        "FLEET_INGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
        "FLEET_INGEST_HTTP_PORT": str(free_port()),
        "FLEET_INGEST_MQTT_PORT": str(free_port()),  # no broker: workers retry
    }
    env.pop("FLEET_INGEST_CONFIG", None)
    collector = Collector(systemd_socket)
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "fleet-ingest"), "serve"], env=env, stdout=log, stderr=log, cwd=tmp_path
        )
        try:
            ready = collector.until("READY=1", timeout_s=60)
            assert "STATUS=0/1 workers connected to the broker; 0 records stored" in ready
            _watch_a_frozen_service(proc, collector)
            proc.send_signal(signal.SIGTERM)
            collector.until("STOPPING=1", timeout_s=30)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
