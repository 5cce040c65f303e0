"""A serial port speaking UBX: send a frame, wait for the reply that matches, or time out.

The thin I/O layer under :mod:`firmware_agent.gnss.receiver_setup`: pyserial through
pyserial-asyncio-fast (as :mod:`firmware_agent.gnss.reader`), the stream cut into
frames by :class:`~firmware_agent.gnss.ubx.UbxFramer`. Every wait has a deadline;
nothing here waits forever for a receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Self

import serial
import serial_asyncio_fast
from pyubx2 import UBXMessage

from firmware_agent.errors import DeviceUnavailableError
from firmware_agent.gnss.ubx import UbxFramer, parse_frame


class UbxLink:
    """``async with UbxLink(port, baudrate=...) as link``: UBX requests over a serial port.

    Opening raises :class:`DeviceUnavailableError` when the port cannot be opened (absent,
    busy, permission denied); so does reading once the device is gone.
    """

    def __init__(self, port: str, *, baudrate: int = 9600) -> None:
        self.port = port
        self.baudrate = baudrate
        self.framer = UbxFramer()
        self.bytes_read = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[UBXMessage] = deque()

    async def __aenter__(self) -> Self:
        try:
            self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
                url=self.port, baudrate=self.baudrate, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as err:
            raise DeviceUnavailableError(f"cannot open {self.port}: {err}") from err
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None

    async def send(self, frame: bytes) -> None:
        if self._writer is None:
            raise DeviceUnavailableError(f"{self.port} is not open")
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (serial.SerialException, OSError) as err:
            raise DeviceUnavailableError(f"cannot write to {self.port}: {err}") from err

    def discard(self) -> None:
        """Forget replies already read (stale answers to earlier requests)."""
        self._pending.clear()

    async def wait_for(
        self, accept: Callable[[UBXMessage], bool], timeout_s: float
    ) -> UBXMessage | None:
        """The first message ``accept`` takes within ``timeout_s``, or None.

        Messages read meanwhile that ``accept`` does not take are kept for later waits.
        """
        for message in self._pending:
            if accept(message):
                self._pending.remove(message)
                return message
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for message in await self._read_messages():
                        if accept(message):
                            return message
                        self._pending.append(message)
        except TimeoutError:
            return None

    async def wait_for_nmea(self, timeout_s: float) -> bool:
        """Whether NMEA has come (or comes within ``timeout_s``)."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.framer.nmea_seen:
                    self._pending.extend(await self._read_messages())
        except TimeoutError:
            pass
        return self.framer.nmea_seen

    async def request(
        self, frame: bytes, accept: Callable[[UBXMessage], bool], timeout_s: float
    ) -> UBXMessage | None:
        """Send ``frame`` and wait for its answer; earlier unclaimed replies are dropped
        first, so a late answer to a previous request is never taken for this one."""
        self.discard()
        await self.send(frame)
        return await self.wait_for(accept, timeout_s)

    async def _read_messages(self) -> list[UBXMessage]:
        if self._reader is None:
            raise DeviceUnavailableError(f"{self.port} is not open")
        try:
            data = await self._reader.read(4096)
        except (serial.SerialException, OSError) as err:
            raise DeviceUnavailableError(f"cannot read {self.port}: {err}") from err
        if not data:
            raise DeviceUnavailableError(f"end of file on {self.port}")
        self.bytes_read += len(data)
        messages = []
        for frame in self.framer.feed(data):
            message = parse_frame(frame)
            if message is not None:
                messages.append(message)
        # Bounded: replies nobody waits for (NAV messages a receiver was set to send).
        while len(self._pending) > 64:
            self._pending.popleft()
        return messages
