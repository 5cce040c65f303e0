"""Capped exponential backoff with jitter, for every reconnect loop of the agent."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for successive retries: ``initial_s * 2**n``, capped at ``max_s``, jittered.

    The jitter ("equal jitter": half fixed, half random) spreads the reconnects of a
    fleet of vans that all lost the same broker or cell at once, while never retrying
    sooner than half the nominal delay.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        *,
        random_fn: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self._initial_s = initial_s
        self._max_s = max_s
        self._random = random_fn
        self.attempt = 0

    def next_delay_s(self) -> float:
        nominal = min(self._max_s, self._initial_s * 2.0**self.attempt)
        self.attempt += 1
        return nominal / 2.0 + self._random() * nominal / 2.0

    def reset(self) -> None:
        self.attempt = 0
