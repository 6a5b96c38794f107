"""Daemon hooks, as in dramatiq's middleware: one object per concern, called at fixed points.

:class:`Stats` (the counters ``status`` shows) is one; metrics (a later
issue) will be another. Hooks run on worker threads, so they must be
thread-safe and quick. An exception from a hook is a bug in the hook: it
stops the daemon (claimed events go back at shutdown) and is never taken for
a handler's failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .outcomes import DIED, EXPIRED, PERMANENT, Dead, Done, Failed, HandlerTimeout, Outcome, Released

if TYPE_CHECKING:
    from ..event import Event
    from ..transport import Delivery, Fetched
    from .handling import Sub


_TIMEOUT = HandlerTimeout.__name__ + ":"


class Middleware:
    """Base class: override the hooks you need; the others do nothing."""

    def on_recover(self, count: int) -> None:
        """After ``count`` events of dead consumers were put back: at start, and by any fetch that
        recovered some (fs: rescans and bucket takeovers; memory: a dead consumer's keys)."""

    def on_fetch(self, fetched: Fetched) -> None:
        """After every fetch (also empty ones): new leases, quarantined input, deferred work."""

    def before_handle(self, event: Event, handler: Sub) -> None:
        """Just before ``handler`` runs for ``event`` (on the worker's thread)."""

    def after_handle(self, event: Event, handler: Sub, seconds: float, error: BaseException | None) -> None:
        """After ``handler`` returned (``error`` None) or failed; ``seconds`` by the daemon's clock.

        Follow-ups were committed before this when it succeeded. A timed-out
        handler is reported here with a :class:`~poetctl.daemon.outcomes.HandlerTimeout`.
        """

    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        """After the outcome of a delivery was applied through the transport."""


class Hooks:
    """The loop's view of its middleware: per hook, the bound methods of those that override it.

    Hooks nobody overrides cost nothing per event (the worker skips empty lists).
    """

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = list(middleware)

        def overriding(name: str) -> list[Any]:
            base = getattr(Middleware, name)
            return [getattr(m, name) for m in self.middleware if getattr(type(m), name) is not base]

        self.recover = overriding("on_recover")
        self.fetch = overriding("on_fetch")
        self.before = overriding("before_handle")
        self.after = overriding("after_handle")
        self.outcome = overriding("on_outcome")

    def on_recover(self, count: int) -> None:
        for f in self.recover:
            f(count)

    def on_fetch(self, fetched: Fetched) -> None:
        for f in self.fetch:
            f(fetched)

    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        for f in self.outcome:
            f(delivery, outcome)


@dataclass
class Stats(Middleware):
    """The daemon's counters (the ``counts`` of its heartbeat and ``system.health``)."""

    clock: Callable[[], float] = time.time
    processed: int = 0
    dead: int = 0
    expired: int = 0
    permanent: int = 0
    died: int = 0
    corrupt: int = 0
    retries: int = 0
    handed_back: int = 0
    recovered: int = 0
    claimed: int = 0
    deferred: int = 0  # of the last fetch: work due later or held by another consumer
    timeouts: int = 0
    started: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def on_recover(self, count: int) -> None:
        with self._lock:
            self.recovered += count

    def on_fetch(self, fetched: Fetched) -> None:
        with self._lock:
            self.claimed += len(fetched.deliveries)
            self.corrupt += fetched.quarantined
            self.deferred = fetched.deferred

    # Timeouts are counted from the outcomes, not in after_handle: a hook around every handler
    # call would cost two clock reads per event for a rare case.
    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        with self._lock:
            if type(outcome) is Done:
                self.processed += 1
            elif isinstance(outcome, Failed):
                self.retries += 1
                self.timeouts += outcome.attempt.error.startswith(_TIMEOUT)
            elif isinstance(outcome, Released):
                self.handed_back += 1
            elif isinstance(outcome, Dead):
                if outcome.reason == EXPIRED:
                    self.expired += 1
                else:
                    self.dead += 1
                    self.permanent += outcome.reason == PERMANENT
                    self.timeouts += str(outcome.info.get("error") or "").startswith(_TIMEOUT)
                    self.died += outcome.reason == DIED

    @property
    def activity(self) -> int:
        """Changes whenever something was leased, quarantined or finished (for ``--once``)."""
        return self.claimed + self.corrupt + self.processed + self.dead + self.expired

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {
                "processed": self.processed,
                "dead": self.dead,
                "expired": self.expired,
                "corrupt": self.corrupt,
                "retries": self.retries,
                "handed_back": self.handed_back,
                "recovered": self.recovered,
                "claimed": self.claimed,
                "timeouts": self.timeouts,
            }


__all__ = ["Hooks", "Middleware", "Stats"]
