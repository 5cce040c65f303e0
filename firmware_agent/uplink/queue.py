"""The outbox from the event loop: every call runs on one dedicated thread.

SQLite commits with ``synchronous=FULL`` wait for the disk (tens of milliseconds on an
SD card), so they never run on the event loop; and one thread (not ``to_thread``'s
pool) keeps the single connection's calls in order, which the outbox requires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Self, TypeVar

from firmware_agent.errors import OutboxStorageError
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.uplink.outbox import DEFAULT_RESERVE_BYTES, Outbox, OutboxRecord

_LOG = logging.getLogger(__name__)

_T = TypeVar("_T")


class AsyncOutbox:
    """``async with AsyncOutbox(path) as outbox``: the :class:`Outbox` API, awaitable.

    ``changed`` is set whenever a record is added, so a sender can sleep until there
    is something to send.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        budget_bytes: int = 100 * 1024 * 1024,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self._path = path
        self._budget_bytes = budget_bytes
        self._reserve_bytes = reserve_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._outbox: Outbox | None = None
        self._ack_faults = FaultCounter()
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        try:
            self._outbox = await self._run(
                Outbox,
                self._path,
                budget_bytes=self._budget_bytes,
                reserve_bytes=self._reserve_bytes,
            )
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
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

    async def add_many(
        self,
        stream: str,
        items: Sequence[tuple[bytes, datetime]],
        *,
        meta: Mapping[str, bytes] | None = None,
    ) -> list[int]:
        seqs = await self._run(self.outbox.add_many, stream, items, meta=meta)
        self.changed.set()
        return seqs

    async def add_batch(
        self,
        groups: Sequence[tuple[str, Sequence[tuple[bytes, datetime]]]],
        *,
        meta: Mapping[str, bytes] | None = None,
    ) -> list[list[int]]:
        seqs = await self._run(self.outbox.add_batch, groups, meta=meta)
        self.changed.set()
        return seqs

    async def pending(
        self, stream: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[OutboxRecord]:
        return await self._run(self.outbox.pending, stream, after_seq=after_seq, limit=limit)

    async def ack(self, stream: str, seq: int) -> int:
        """Apply an ack; 0 if the outbox cannot write (a full disk: deleting needs room
        in the write-ahead log too). Counted and logged once: the next ack, which is
        cumulative, applies it."""
        try:
            return await self._run(self.outbox.ack, stream, seq)
        except OutboxStorageError as err:
            self._ack_faults.add("ack_not_applied", str(err))
            log_first_seen(_LOG, self._ack_faults, "outbox")
            return 0

    async def meta(self, name: str) -> bytes | None:
        return await self._run(self.outbox.meta, name)

    async def stats(self) -> dict[str, int]:
        return await self._run(self.outbox.stats)

    async def last_reset(self) -> dict[str, object] | None:
        return await self._run(self.outbox.last_reset)

    async def acked(self, stream: str) -> int:
        return await self._run(self.outbox.acked, stream)

    async def last_seq(self, stream: str) -> int:
        return await self._run(self.outbox.last_seq, stream)

    async def counts(self) -> dict[str, int]:
        return await self._run(self.outbox.counts)
