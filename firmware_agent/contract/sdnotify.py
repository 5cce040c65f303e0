"""systemd's service notification protocol (``sd_notify``), for both services.

``fleet-agent run`` and ``fleet-ingest serve`` run as ``Type=notify`` units with a
``WatchdogSec=``: each says ``READY=1`` once it does its work, ``WATCHDOG=1`` from its
event loop at half the watchdog interval (a loop that hangs stops pinging, and systemd
kills and restarts the service), ``STATUS=`` lines for ``systemctl status`` and
``STOPPING=1`` when it shuts down. Outside systemd (no ``$NOTIFY_SOCKET``) every call
does nothing.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (an abstract socket when the name starts with ``@``). That is a few
lines of the standard library, so no library is used: python-systemd needs libsystemd
and a compiler on the van, and the small pure-Python packages add a dependency for
what :meth:`Notifier.send` does. The socket is non-blocking: a datagram systemd cannot
take at once is dropped (the next ping follows), the event loop never waits on it.

Here in the contract because both sides use it (ingest imports the van's contract
only); it imports nothing of either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# A status line is for a human reading `systemctl status`: keep it one short line.
STATUS_MAX_CHARS = 200


def socket_address(name: str) -> str:
    """The address to send to for a ``$NOTIFY_SOCKET`` value (``@`` -> abstract)."""
    return "\0" + name[1:] if name.startswith("@") else name


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, as sd_notify(3)
    advises; None when there is no watchdog, it is malformed, or ``$WATCHDOG_PID``
    names another process (the watchdog is for the main process only)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2e6


def status_line(text: str) -> str:
    """``text`` as one ``STATUS=`` value: newlines dropped, cut to STATUS_MAX_CHARS."""
    flat = " ".join(text.split())
    return flat if len(flat) <= STATUS_MAX_CHARS else flat[: STATUS_MAX_CHARS - 1] + "…"


class Notifier:
    """Sends notifications to systemd; a no-op without ``$NOTIFY_SOCKET``.

    ``Notifier.from_environ()`` in a service; ``close()`` (or ``with``) at the end.
    """

    def __init__(self, socket_name: str | None, *, watchdog_s: float | None = None) -> None:
        self.address = socket_address(socket_name) if socket_name else None
        self.watchdog_s = watchdog_s
        self._sock: socket.socket | None = None
        self._dropped = 0
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET") or None, watchdog_s=watchdog_interval_s(env, os.getpid())
        )

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``fields`` (``"READY=1"``, ``"STATUS=..."``); True if sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:  # systemd gone, its queue full: never stop the service
            self._dropped += 1
            if self._dropped == 1:
                log.warning(
                    "sd_notify to %r failed: %s (counted quietly from now on)", self.address, err
                )
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", "STATUS=" + status_line(status))

    def status(self, status: str) -> bool:
        return self.send("STATUS=" + status_line(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", "STATUS=" + status_line(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def keep_alive(self, status: Callable[[], str], *, status_every_s: float = 10.0) -> None:
        """``WATCHDOG=1`` every :attr:`watchdog_s` from the running event loop, and
        ``STATUS=status()`` when it changes or every ``status_every_s``; until cancelled.
        Sent from the loop itself, so a loop blocked or hung sends nothing."""
        loop = asyncio.get_running_loop()
        last_status = ""
        status_due = 0.0
        period_s = min(self.watchdog_s or status_every_s, status_every_s)
        while True:
            fields = ["WATCHDOG=1"] if self.watchdog_s is not None else []
            now = loop.time()
            text = status_line(status())
            if text != last_status or now >= status_due:
                fields.append("STATUS=" + text)
                last_status, status_due = text, now + status_every_s
            if fields:
                self.send(*fields)
            await asyncio.sleep(period_s)
