"""Retry policy: capped exponential backoff with full jitter (as in dramatiq's Retries).

``delay(n)`` for the n-th failed attempt (1-based) is uniform in
``[base * 2**(n-1) / 2, base * 2**(n-1)]`` capped at ``cap`` — half fixed,
half jitter, so retries of many events spread out but never come early.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

# The error of an attempt during which the daemon process died (os._exit, SIGKILL,
# the OOM killer): recovery finds the handler still marked as running.
DIED = "the daemon died while handling it"


@dataclass(slots=True)
class RetryPolicy:
    """How often and when a failing handler is tried again."""

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    rand: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base < 0 or self.cap < 0:
            raise ValueError("base and cap must be >= 0")

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the delay after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.cap, self.base * (2.0 ** (attempt - 1))))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        hi = self.ceiling(attempt)
        return hi / 2 + (hi / 2) * self.rand()

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failures mean the event goes to dead/."""
        return attempts >= self.max_attempts
