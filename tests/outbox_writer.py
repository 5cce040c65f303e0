"""A process that adds records to an outbox until it is killed (tests/test_outbox_crash.py).

    python tests/outbox_writer.py DB BUDGET_BYTES SEED MODE

Prints ``ready`` once the outbox is open, then, after each ``add``/``add_many`` has
returned, one line ``<stream> <seq> <tag>`` per record it stored, flushed at once: a
line on stdout is a promise that the record is durable. ``tag`` names the payload, so
the test can check that each seq holds the bytes that were stored under it. MODE
``mixed`` spreads records over the three streams; ``telemetry`` is mostly large
telemetry batches, to keep a small budget's thinning busy.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime

from firmware_agent.uplink.outbox import Outbox

TELEMETRY_BYTES = 24


def payload(stream: str, tag: str) -> bytes:
    """The bytes stored under ``tag``: a 24-byte fix, or a longer event or POD."""
    if stream == "telemetry":
        return tag.encode().ljust(TELEMETRY_BYTES, b".")
    return (f"{stream} {tag} " * 8).encode()


def main(argv: list[str]) -> None:
    path, budget_bytes, seed, mode = argv[0], int(argv[1]), int(argv[2]), argv[3]
    rng = random.Random(seed)
    out = sys.stdout
    with Outbox(path, budget_bytes=budget_bytes) as outbox:
        out.write("ready\n")
        out.flush()
        i = 0
        while True:
            roll = rng.random()
            if mode == "telemetry":
                stream, n = ("telemetry", rng.randint(50, 200)) if roll < 0.9 else ("pod", 1)
            elif roll < 0.4:
                stream, n = "telemetry", rng.randint(1, 40)
            else:
                stream, n = rng.choice(("telemetry", "events", "pod")), 1
            tags = [f"{seed}-{i + k}" for k in range(n)]
            i += n
            now = datetime.now(UTC)
            if n == 1:
                seqs = [outbox.add(stream, payload(stream, tags[0]), created=now)]
            else:
                seqs = outbox.add_many(stream, [(payload(stream, tag), now) for tag in tags])
            out.write(
                "".join(f"{stream} {seq} {tag}\n" for seq, tag in zip(seqs, tags, strict=True))
            )
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
