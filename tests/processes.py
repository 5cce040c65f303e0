"""Services the tests run as processes, as installed: started with their output in a
log, waited for, and stopped (SIGTERM, then SIGKILL if they hang)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL once ``timeout_s`` has passed; reaped either way."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(argv: Sequence[str | Path], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running, its stdout and stderr in ``log``; stopped on leaving."""
    with log.open("wb") as out:
        process = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


def wait_http(
    base: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0
) -> None:
    """Until ``base``/health answers (200, or 503 while a worker still connects); fails
    with the log if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
