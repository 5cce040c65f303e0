"""Seeded random streams, one per effect.

Every random choice in the simulator draws from a stream named after what it decides
("town", "stops", "noise", ...) and seeded with the scenario's seed. Separate streams
mean that switching one effect off, or asking for more of one thing, leaves every
other draw unchanged. Seeding with a string is stable across runs and platforms
(``random`` hashes it with SHA-512, not with the salted ``hash()``).
"""

from __future__ import annotations

import random


def stream(name: str, seed: int | str) -> random.Random:
    """The random stream ``name`` for ``seed``."""
    # Simulation, not cryptography: reproducibility is the point.
    return random.Random(f"{name}:{seed}")  # noqa: S311
