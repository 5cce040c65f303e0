"""Fake receivers that ship in the package: a pty, a TCP server, a file.

They are the simulator's side of the wire, like gpiozero's mock pins: tests and
testers run the same code. Each is an async context manager with a ``write(data) ->
int`` that never blocks: like a UART, a receiver does not wait for its reader, so
bytes that cannot be delivered right now are dropped and counted.

- :class:`PtyReceiver`: a pseudo-terminal the agent opens like a serial device,
  reached through a stable symlink (as udev's ``/dev/fleet/gnss``). ``unplug()`` and
  ``replug()`` act out a USB receiver being pulled out and put back. Given a
  ``responder`` (:class:`simulator.ubx_responder.UbxResponder`), it also reads what
  the host writes and sends back the responder's replies: a u-blox receiver's UBX.
- :class:`TcpReceiver`: every connected client gets the stream, like gpsd's gpsfake.
- :class:`FileSink`: an NMEA log on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import sys
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self

from simulator.errors import ReceiverError

if sys.platform != "win32":
    import tty


class Sink(Protocol):
    """Where a receiver's bytes go. ``write`` returns how many were accepted."""

    def write(self, data: bytes) -> int: ...


class Responder(Protocol):
    """Answers what the host writes to a receiver (UBX, for a u-blox)."""

    def feed(self, data: bytes) -> list[bytes]: ...


# While no one holds the port, the pty master reads EIO at once, again and again:
# input watching pauses this long instead of spinning.
_NO_READER_RETRY_S = 0.05


class PtyReceiver:
    """A GNSS receiver on a pseudo-terminal, reached through ``link_path``.

    On entry a pty is created, set raw, and ``link_path`` is made a symlink to its
    slave device (``/dev/pts/N``); the simulator closes its own slave descriptor so
    that only the agent holds the port. :meth:`write` never blocks and drops what it
    cannot deliver (no reader has the port open, or the kernel buffer is full), as a
    UART does; ``dropped_bytes`` counts it.

    :meth:`unplug` closes the master and removes the link: a reader gets EOF or EIO,
    exactly as when a USB receiver is pulled out. :meth:`replug` creates a fresh pty
    and points the same link at it. On exit the link is removed.
    """

    def __init__(self, link_path: Path, *, responder: Responder | None = None) -> None:
        if sys.platform == "win32":
            raise ReceiverError("a pty receiver needs a POSIX system")
        self.path = link_path
        self.responder = responder
        self._watching: int | None = None
        self.bytes_written = 0
        self.dropped_bytes = 0
        self.plug_count = 0
        self._master: int | None = None
        self._device: Path | None = None
        self._poll = select.poll()

    async def __aenter__(self) -> Self:
        self._plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def device(self) -> Path:
        """The pty's slave device (``/dev/pts/N``), the current one or the last one."""
        if self._device is None:
            raise ReceiverError("the receiver has not been plugged in yet")
        return self._device

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def reader_attached(self) -> bool:
        """Whether someone holds the port open (the master sees no hang-up)."""
        if self._master is None:
            return False
        events = self._poll.poll(0)
        return not any(mask & select.POLLHUP for _, mask in events)

    async def wait_for_reader(self, *, poll_s: float = 0.05) -> None:
        """Return once someone holds the port open."""
        # A reader's arrival only shows as the hang-up condition clearing; nothing
        # signals it, so poll.
        while not self.reader_attached:  # noqa: ASYNC110
            await asyncio.sleep(poll_s)

    def write(self, data: bytes) -> int:
        """Send ``data``; returns the bytes accepted, the rest is dropped and counted.

        With nobody holding the port the bytes are dropped: a pty would otherwise keep
        them for the next reader, which a serial port never does.
        """
        master = self._master
        if master is None or not self.reader_attached:
            self.dropped_bytes += len(data)
            return 0
        try:
            sent = os.write(master, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # EIO: the reader went away between the poll and the write.
            sent = 0
        self.bytes_written += sent
        self.dropped_bytes += len(data) - sent
        return sent

    def unplug(self) -> None:
        """Pull the receiver out: close the pty and remove the link."""
        self._remove_link()
        self._unwatch()
        if self._master is not None:
            self._poll.unregister(self._master)
            os.close(self._master)
            self._master = None

    def replug(self) -> None:
        """Put a receiver back: a fresh pty behind the same link path."""
        self.unplug()
        self._plug()

    def close(self) -> None:
        """Unplug for good. Safe to call more than once."""
        self.unplug()

    def _plug(self) -> None:
        if self.path.exists() and not self.path.is_symlink():
            raise ReceiverError(f"{self.path} exists and is not a symlink; refusing to replace it")
        try:
            master, slave = os.openpty()
        except OSError as err:
            raise ReceiverError(f"cannot create a pty: {err}") from err
        try:
            device = Path(os.ttyname(slave))
            # Raw: no echo, no line editing, no CR/LF translation - a serial line.
            tty.setraw(slave)
            os.set_blocking(master, False)
        except OSError as err:
            os.close(master)
            raise ReceiverError(f"cannot set up the pty: {err}") from err
        finally:
            os.close(slave)
        self._master = master
        self._device = device
        self._poll.register(master, select.POLLOUT)
        try:
            self._link(device)
        except OSError as err:
            self.unplug()
            raise ReceiverError(f"cannot link {self.path} to {device}: {err}") from err
        self.plug_count += 1
        self._watch()

    def _watch(self) -> None:
        if self.responder is None or self._master is None or self._watching is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.add_reader(self._master, self._on_input, self._master)
        self._watching = self._master

    def _unwatch(self) -> None:
        if self._watching is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(self._watching)
        self._watching = None

    def _on_input(self, master: int) -> None:
        if master != self._master or self.responder is None:
            return
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: nobody holds the port; look again a little later.
            self._unwatch()
            asyncio.get_running_loop().call_later(_NO_READER_RETRY_S, self._watch)
            return
        for reply in self.responder.feed(data):
            self.write(reply)

    def _link(self, device: Path) -> None:
        """Point the link at ``device`` atomically (a reader never sees it missing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(device)
        os.replace(temporary, self.path)

    def _remove_link(self) -> None:
        # Only our own link: someone may have pointed the path elsewhere meanwhile.
        if (
            self._device is not None
            and self.path.is_symlink()
            and Path(os.readlink(self.path)) == self._device
        ):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class TcpReceiver:
    """A receiver on a TCP port: every connected client gets the stream (gpsfake).

    ``port=0`` picks a free port; read it from :attr:`port` after entry. Clients are
    not waited for: a client too slow to keep its backlog under ``max_backlog_bytes``
    misses data, and bytes sent while nobody is connected are dropped; both count in
    ``dropped_bytes``. Whatever clients send is read and ignored.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_backlog_bytes: int = 256 * 1024
    ) -> None:
        self.host = host
        self.port = port
        self.bytes_written = 0
        self.dropped_bytes = 0
        self._max_backlog = max_backlog_bytes
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._clients_changed = asyncio.Condition()

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as err:
            raise ReceiverError(f"cannot listen on {self.host}:{self.port}: {err}") from err
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def clients(self) -> int:
        """How many clients are connected now."""
        return len(self._writers)

    async def wait_for_client(self, count: int = 1) -> None:
        """Return once at least ``count`` clients are connected."""
        async with self._clients_changed:
            await self._clients_changed.wait_for(lambda: len(self._writers) >= count)

    def write(self, data: bytes) -> int:
        """Send ``data`` to every client; returns ``len(data)`` if any client took it."""
        accepted = False
        if not self._writers:
            self.dropped_bytes += len(data)
        for writer in list(self._writers):
            transport = writer.transport
            if transport.is_closing() or transport.get_write_buffer_size() > self._max_backlog:
                self.dropped_bytes += len(data)
                continue
            writer.write(data)
            accepted = True
        if accepted:
            self.bytes_written += len(data)
            return len(data)
        return 0

    async def close(self) -> None:
        """Stop listening and disconnect every client."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        async with self._clients_changed:
            self._clients_changed.notify_all()
        try:
            # Read until the client leaves; what it sends (a gpsd client's ?WATCH, say)
            # is ignored, as gpsfake's raw stream ignores it.
            with contextlib.suppress(ConnectionError):
                while await reader.read(4096):
                    continue
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)


class FileSink:
    """Writes the stream to a file (truncated on entry)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes_written = 0
        self.dropped_bytes = 0
        self._file: BinaryIO | None = None

    async def __aenter__(self) -> Self:
        try:
            self._file = self.path.open("wb")
        except OSError as err:
            raise ReceiverError(f"cannot open {self.path}: {err}") from err
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, data: bytes) -> int:
        if self._file is None:
            raise ReceiverError("FileSink used outside its context")
        # Buffered writes of a few hundred bytes to a local file do not stall the loop.
        self._file.write(data)
        self.bytes_written += len(data)
        return len(data)
