"""A TCP proxy between a van and its broker that can cut the network, for the e2e tests.

async with NetCut(upstream_port=broker.port) as link:
    agent connects to 127.0.0.1:link.port
    link.blackhole()   # the cellular link dies: nothing moves, nothing is closed
    link.resume()      # it comes back: what TCP still held is delivered
    link.drop()        # every connection reset at once (a modem re-dial)

A black hole is what a dead cellular link looks like to both ends: bytes stop moving,
no FIN, no RST. The proxy simply stops reading, so what each side writes stays in the
kernel's socket buffers, as unacknowledged TCP segments stay in the sender's
retransmission queue; if the connection survives the outage (shorter than the MQTT
keepalive), it is all delivered on :meth:`resume`, in order, nothing lost and nothing
duplicated. If an end gives up meanwhile (keepalive timeout), its close is not seen by
the other end until the link is back, exactly as over a real dead link. A connection
opened during the black hole is accepted but stays silent (a CONNECT that never gets
its CONNACK) until :meth:`resume`, when it is joined to a fresh upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class NetCut:
    """A proxy listening on ``127.0.0.1:port`` that forwards to ``upstream_port``."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0  # accepted so far
        self.drops = 0  # connections reset by drop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def cut(self) -> bool:
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        """Stop forwarding in both directions, on every connection, without closing any."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again; what was held is delivered."""
        self._flowing.set()

    def drop(self) -> None:
        """Reset every open connection, both halves, now (RST, not FIN)."""
        for writer in list(self._writers):
            writer.transport.abort()
            self.drops += 1
        self._writers.clear()

    async def __aenter__(self) -> NetCut:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._flowing.wait()  # a dead link: the CONNECT goes nowhere yet
            try:
                up_r, up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError as err:
                log.info("netcut: upstream %d refused: %s", self.upstream_port, err)
                client_w.transport.abort()
                return
            self._writers.add(up_w)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._pump(client_r, up_w), name="netcut-up")
                    tg.create_task(self._pump(up_r, client_w), name="netcut-down")
            except* (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                up_w.transport.abort()
                self._writers.discard(up_w)
        finally:
            client_w.transport.abort()
            self._writers.discard(client_w)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy until EOF or a reset; the first side to end ends the whole connection
        (the other pump's read fails when its transport is aborted)."""
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                # Read before the cut, held until the link is back (as a TCP segment
                # the receiver never acknowledged).
                await self._flowing.wait()
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
