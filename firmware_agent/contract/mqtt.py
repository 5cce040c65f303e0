"""The MQTT connection both sides share: TLS settings and the reconnect loop.

The van's uplink and ingest's workers connect the same way: MQTT 5 through aiomqtt,
optionally with mutual TLS (:class:`TlsConfig`), and they reconnect with the same loop
(:func:`stay_connected`, capped jittered :class:`~.backoff.Backoff`), which tells a
lost broker from a cancellation however task groups wrap them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from firmware_agent.contract.backoff import Backoff


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Mutual TLS: the broker's CA, and the van's certificate and key (CN = device id)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """Reads the files: call it off the event loop."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None:
            ctx.load_cert_chain(
                str(self.cert_file), None if self.key_file is None else str(self.key_file)
            )
        return ctx


def being_cancelled() -> bool:
    """Whether the current task has a cancellation pending.

    A task group cancelled while one of its children fails raises the child's error
    instead of CancelledError; a reconnect loop that took that for a lost broker would
    swallow the cancellation and reconnect forever (seen: ``fleet-agent run
    --exit-when-drained`` hanging after its last ack). Such loops check this first.
    It is exact only if no task group ran directly in the task: Python 3.11's
    TaskGroup leaves its own cancel request counted after a child fails, hence
    :func:`until_one_ends` for the connection's tasks.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stay_connected(
    connection: Callable[[Backoff], Awaitable[None]],
    backoff: Backoff,
    lost: Callable[[aiomqtt.MqttError], None],
) -> None:
    """The reconnect loop of every MQTT client here (the uplink, ingest's workers).

    Runs ``connection(backoff)`` (which resets ``backoff`` once connected) until it
    fails; a lost broker is reported to ``lost`` and retried after the backoff's next
    delay, anything else propagates, and so does a cancellation, whatever error a task
    group wrapped around it (:func:`being_cancelled`).
    """
    while True:
        try:
            await connection(backoff)
        except (aiomqtt.MqttError, ExceptionGroup) as caught:
            if being_cancelled():
                raise asyncio.CancelledError from caught
            err = broker_error(caught)
            if err is None:
                raise
            lost(err)
            await asyncio.sleep(backoff.next_delay_s())


async def until_one_ends(coros: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` as named tasks until the first ends; cancel and await the others;
    re-raise what ended the first (an error, or nothing). A cancellation of the caller
    propagates as CancelledError, never wrapped in an exception group."""
    tasks = [asyncio.create_task(c, name=name) for name, c in coros.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            t.result()


def broker_error(err: BaseException) -> aiomqtt.MqttError | None:
    """The broker connection's failure in ``err`` (possibly wrapped by task groups), or
    ``None`` when ``err`` holds anything else, which must propagate."""
    if isinstance(err, aiomqtt.MqttError):
        return err
    if isinstance(err, BaseExceptionGroup):
        matched, rest = err.split(aiomqtt.MqttError)
        if rest is None and matched is not None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, aiomqtt.MqttError) else None
    return None
