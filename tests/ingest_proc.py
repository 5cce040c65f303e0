"""One ingest worker in a process of its own, so that a test can SIGKILL it mid-batch.

    python -m tests.ingest_proc --port P (--sqlite FILE | --dsn DSN)
        [--hold-s S --hold-at before|after] [--stream-lease-s S]

It prints ``connected`` once subscribed, and with ``--hold-s`` one line per batch:
``writing N`` and then a pause of S seconds before the batch's transaction (``before``:
the messages are received, the broker counts them delivered, nothing is stored), or
``committed N`` and the pause after the commit, before the acks and the normalized
stream go out (``after``). A test waits for such a line and kills the process inside
the pause: a deterministic "killed mid-batch".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any, cast

from cloud_ingest.store.base import Store, WriteBatch, WriteResult
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig


class HoldingStore:
    """``inner`` with a pause before or after each write, announced on stdout."""

    def __init__(self, inner: Store, hold_s: float, at: str) -> None:
        self.inner = inner
        self.hold_s = hold_s
        self.at = at

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, batch: WriteBatch, **kwargs: Any) -> WriteResult:
        n = len(batch.positions) + len(batch.events) + len(batch.pods)
        if n == 0:  # only outbox bookkeeping (a batch of status messages): no pause
            return await self.inner.write(batch, **kwargs)
        if self.at == "before":
            _say(f"writing {n}")
            await asyncio.sleep(self.hold_s)
            return await self.inner.write(batch, **kwargs)
        result = await self.inner.write(batch, **kwargs)
        _say(f"committed {n}")
        await asyncio.sleep(self.hold_s)
        return result


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    inner: Store = SqliteStore(args.sqlite) if args.sqlite else PostgresStore(args.dsn)
    async with inner:
        store = (
            inner if args.hold_s <= 0 else cast(Store, HoldingStore(inner, args.hold_s, args.at))
        )
        worker = IngestWorker(
            store,
            WorkerConfig(
                port=args.port,
                client_id=args.client_id,
                backoff_max_s=0.5,
                stream_lease_s=args.stream_lease_s,
            ),
        )
        task = asyncio.create_task(worker.run(), name="ingest")
        connected = asyncio.create_task(worker.connected.wait())
        await asyncio.wait({task, connected}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        _say("connected")
        await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--sqlite")
    target.add_argument("--dsn")
    parser.add_argument("--client-id", default="ingest-proc")
    parser.add_argument("--hold-s", type=float, default=0.0)
    parser.add_argument("--hold-at", dest="at", choices=("before", "after"), default="before")
    # Short, so that a test sees a killed worker's stream messages taken over quickly.
    parser.add_argument("--stream-lease-s", type=float, default=2.0)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(parser.parse_args()))
