"""How a delivery ends, and how a handler says how it failed.

Handlers raise (exported as ``poetctl.Permanent`` / ``poetctl.Retry``):

* :class:`Permanent` - retrying cannot help (an HTTP 4xx, a payload the
  handler can never accept): the event is dead-lettered at once, reason
  ``permanent``.
* :class:`Retry` - try again ``after`` seconds (e.g. an HTTP 429's
  Retry-After) instead of the backoff schedule. It still counts as an
  attempt, so a handler that always asks for a retry ends in ``dead/``.
* anything else, ``BaseException`` included (``SystemExit``,
  ``KeyboardInterrupt`` raised by the handler): a failure, retried with
  backoff until ``max_attempts``.

Workers turn each delivery into exactly one outcome; the consumer side
applies it through the transport (:mod:`poetctl.daemon.loop`):
:class:`Done` -> ack, :class:`Failed` -> fail (lease kept, retried at
``retry_at``), :class:`Dead` -> dead letter, :class:`Released` -> hand back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import Permanent
from ..transport import Attempt


class Retry(Exception):
    """Raise from a handler: try again ``after`` seconds from now (counts as an attempt)."""

    def __init__(self, message: str = "", *, after: float) -> None:
        if not after >= 0:  # also refuses NaN
            raise ValueError(f"Retry(after=...) must be >= 0 seconds, got {after!r}")
        super().__init__(message or f"retry requested in {after} s")
        self.after = float(after)


class HandlerTimeout(Exception):
    """A handler ran longer than its subscription's timeout; the worker moved on without it."""


# Reasons written into dead letters (``info["reason"]``).
EXHAUSTED = "attempts_exhausted"
PERMANENT = "permanent"
EXPIRED = "expired"
DIED = "daemon_died"  # the process died while handling it, max_attempts times (the name users know)


@dataclass(slots=True, frozen=True)
class Done:
    """Every handler finished (or none subscribed): ack."""


@dataclass(slots=True, frozen=True)
class Failed:
    """One handler failed; the lease is kept and the delivery retried at ``retry_at``."""

    attempt: Attempt
    retry_at: float


@dataclass(slots=True, frozen=True)
class Dead:
    """Dead-letter with ``info`` (see :func:`poetctl.transport.dead_letter_info`)."""

    reason: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Released:
    """Not finished when the loop stopped: handed back with its record (not an attempt)."""


Outcome = Done | Failed | Dead | Released
DONE = Done()
RELEASED = Released()

__all__ = [
    "DIED",
    "DONE",
    "EXHAUSTED",
    "EXPIRED",
    "PERMANENT",
    "RELEASED",
    "Dead",
    "Done",
    "Failed",
    "HandlerTimeout",
    "Outcome",
    "Permanent",
    "Released",
    "Retry",
]
