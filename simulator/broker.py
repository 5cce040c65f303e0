"""A real Mosquitto for a test: its own port, config and lifetime (kill it, restart it).

with Mosquitto(tmp_path) as broker:
    broker.port ...
    broker.kill(); broker.start()   # same port, same persistence file
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from simulator.errors import SimulatorError

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerError(SimulatorError, RuntimeError):
    """The broker could not be started (or its share guard built)."""


class Mosquitto:
    """One broker process. ``persistence``: keep sessions and queued messages across a
    restart (as a production broker does), in ``directory``. ``max_queued_messages``
    per client (0: no limit; Mosquitto's default of 1000 drops QoS 1 messages for a
    subscriber that falls further behind). ``nodelay``: ``set_tcp_nodelay`` (acks and
    PUBACKs are small writes; Mosquitto's default leaves Nagle's algorithm on).

    ``port``: the port to listen on (default: a free one). ``anonymous``: open a plain,
    anonymous listener on it, as most tests want; False leaves every listener and
    security setting to ``extra``, which must then listen on ``port`` (Mosquitto refuses
    ``per_listener_settings`` after ``allow_anonymous``; see
    :mod:`simulator.fleet_broker`). ``wait_ports``: more listeners :meth:`start` waits
    for (Mosquitto opens them one after the other)."""

    def __init__(
        self,
        directory: Path,
        *,
        persistence: bool = True,
        max_queued_messages: int = 100_000,
        nodelay: bool = True,
        extra: str = "",
        port: int | None = None,
        anonymous: bool = True,
        wait_ports: tuple[int, ...] = (),
    ) -> None:
        if not Path(MOSQUITTO).exists():
            raise BrokerError(f"mosquitto is not installed ({MOSQUITTO}); ./run installs it")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if port is None else port
        self.wait_ports = wait_ports
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        own = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"] if anonymous else []
        lines = [
            *own,
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {directory}/",
            f"max_queued_messages {max_queued_messages}",
            f"set_tcp_nodelay {'true' if nodelay else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            # Run as root, mosquitto would switch to the "mosquitto" user, which cannot
            # write the test's persistence directory.
            "user root" if os.geteuid() == 0 else "",
            extra,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (a fixed binary, our own config)
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        for port in (self.port, *self.wait_ports):
            self._wait_listening(self.process, port, deadline)

    def _wait_listening(self, process: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        """Until ``port`` takes a TCP connection (a TLS listener takes and drops it like
        any other)."""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {port}: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye (what a crash or power cut does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
