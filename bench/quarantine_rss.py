"""Memory of ``fleet-ingest serve`` answering ``GET /v1/quarantine?limit=N`` (issue 13, finding 8).

    python bench/quarantine_rss.py [--rows 1000] [--payload-kib 250] [--backend sqlite|postgresql]

Fills a fresh database with ``--rows`` quarantined messages of ``--payload-kib`` KiB each
(written through the store, as a worker writes them; each settles a seq of its device,
so that the quarantine keeps it whole whatever its size cap), starts ``fleet-ingest
serve`` on it as a process (with a private Mosquitto), and reads the process's resident
memory (``VmRSS``) and its peak (``VmHWM``) from ``/proc`` before and after one
``GET /v1/quarantine?limit=N``, with the response's size and time.

The process is started with the interpreter running this script, so ``PYTHONPATH=DIR``
measures the code in DIR (``git archive HEAD | tar -x -C DIR``: the code before a change).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ingestlib import fresh_pg_database

from cloud_ingest.service import make_store
from cloud_ingest.store.base import Covered, Quarantined, WriteBatch
from simulator.broker import Mosquitto, free_port

DEVICE = "van-rss"


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def fill(url: str, rows: int, payload_bytes: int) -> None:
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    # A JSON event envelope padded to size: text, so the old API also built it as text.
    body = b'{"v":1,"device_id":"van-rss","seq":1,"record":{"pad":"'
    payload = body + b"x" * (payload_bytes - len(body) - 4) + b'"}}\n'
    t0 = datetime.now(UTC) - timedelta(hours=1)
    async with make_store(url) as store:
        await store.migrate()
        await store.register_device(DEVICE, key)
        for start in range(1, rows + 1, 50):
            batch = [
                Quarantined(
                    received_at=t0 + timedelta(seconds=seq),
                    topic=f"fleet/v1/{DEVICE}/pod",
                    device_id=DEVICE,
                    reason="pod_mismatch",
                    detail="record parcel differ(s) from the signed claims",
                    payload=payload,
                    covered=Covered(DEVICE, "pod", seq, seq),
                )
                for seq in range(start, min(start + 50, rows + 1))
            ]
            await store.write(WriteBatch(quarantined=batch))


def measure(url: str, rows: int, limit: int) -> dict[str, float]:
    http_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")},
            "FLEET_INGEST_DATABASE_URL": url,
            "FLEET_INGEST_MQTT_PORT": str(broker.port),
            "FLEET_INGEST_HTTP_PORT": str(http_port),
        }
        log = Path(tmp) / "ingest.log"
        code = "import sys; from cloud_ingest.cli import main; sys.exit(main())"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", code, "serve"], env=env, stdout=out, stderr=out
            )
        base = f"http://127.0.0.1:{http_port}"
        # The API answers no one without a token: a read token, as an operator makes it.
        made = subprocess.run(
            [sys.executable, "-c", code, "token", "create", "--scope", "read", "--name", "bench"],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        request = urllib.request.Request(f"{base}/v1/quarantine?limit={limit}")
        request.add_header("Authorization", f"Bearer {made.stdout.strip()}")
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"serve exited: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(base + "/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except (OSError, urllib.error.HTTPError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"serve not healthy: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            rss0, hwm0 = _kib(process.pid, "VmRSS"), _kib(process.pid, "VmHWM")
            started = time.monotonic()
            size, status = 0, 0
            try:
                with urllib.request.urlopen(request, timeout=600) as r:
                    status = r.status
                    while chunk := r.read(1 << 20):
                        size += len(chunk)
            except (OSError, urllib.error.HTTPError) as err:
                status = getattr(err, "code", -1)
            elapsed = time.monotonic() - started
            alive = process.poll() is None
            rss1 = _kib(process.pid, "VmRSS") if alive else 0
            hwm1 = _kib(process.pid, "VmHWM") if alive else 0
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
    return {
        "rows": rows,
        "status": status,
        "response_mb": size / 1e6,
        "seconds": elapsed,
        "alive": alive,
        "rss_before_mb": rss0 / 1024,
        "peak_before_mb": hwm0 / 1024,
        "rss_after_mb": rss1 / 1024,
        "peak_after_mb": hwm1 / 1024,
        "exit": process.returncode if not alive else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--payload-kib", type=int, default=250)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    import cloud_ingest  # noqa: PLC0415

    print(f"code: {Path(cloud_ingest.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "sqlite":
            url = f"sqlite:///{tmp}/ingest.sqlite3"
            result = run(url, args)
        else:
            with fresh_pg_database() as dsn:
                info = conninfo_to_dict(dsn)
                url = "postgresql://{}@{}:{}/{}".format(
                    info.get("user", "postgres"),
                    info.get("host", "127.0.0.1"),
                    info.get("port", 5432),
                    info["dbname"],
                )
                result = run(url, args)
    for name, value in result.items():
        print(f"{name:>16}: {value:.1f}" if isinstance(value, float) else f"{name:>16}: {value}")


def run(url: str, args: argparse.Namespace) -> dict[str, float]:
    started = time.monotonic()
    asyncio.run(fill(url, args.rows, args.payload_kib * 1024))
    print(f"filled {args.rows} x {args.payload_kib} KiB in {time.monotonic() - started:.1f} s")
    return measure(url, args.rows, args.limit)


if __name__ == "__main__":
    main()
