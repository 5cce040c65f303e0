"""The outbox from the event loop: every call runs on one dedicated thread.

SQLite commits with ``synchronous=FULL`` wait for the disk (tens of milliseconds on an
SD card), so they never run on the event loop; and one thread (not ``to_thread``'s
pool) keeps the single connection's calls in order, which the outbox requires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Self, TypeVar

from firmware_agent.uplink.outbox import Outbox, OutboxRecord

_T = TypeVar("_T")


class AsyncOutbox:
    """``async with AsyncOutbox(path) as outbox``: the :class:`Outbox` API, awaitable.

    ``changed`` is set whenever a record is added, so a sender can sleep until there
    is something to send.
    """

    def __init__(self, path: Path | str, *, budget_bytes: int = 100 * 1024 * 1024) -> None:
        self._path = path
        self._budget_bytes = budget_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._outbox: Outbox | None = None
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._outbox = await self._run(Outbox, self._path, budget_bytes=self._budget_bytes)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._outbox is not None:
            await self._run(self._outbox.close)
            self._outbox = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("AsyncOutbox used outside 'async with'")
        return self._outbox

    async def add(self, stream: str, payload: bytes, *, created: datetime) -> int:
        seq = await self._run(self.outbox.add, stream, payload, created=created)
        self.changed.set()
        return seq

    async def add_many(self, stream: str, items: Sequence[tuple[bytes, datetime]]) -> list[int]:
        seqs = await self._run(self.outbox.add_many, stream, items)
        self.changed.set()
        return seqs

    async def pending(
        self, stream: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[OutboxRecord]:
        return await self._run(self.outbox.pending, stream, after_seq=after_seq, limit=limit)

    async def ack(self, stream: str, seq: int) -> int:
        return await self._run(self.outbox.ack, stream, seq)

    async def acked(self, stream: str) -> int:
        return await self._run(self.outbox.acked, stream)

    async def last_seq(self, stream: str) -> int:
        return await self._run(self.outbox.last_seq, stream)

    async def counts(self) -> dict[str, int]:
        return await self._run(self.outbox.counts)
