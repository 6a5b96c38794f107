"""Test your handlers in-process: a router and a daemon on the memory backend, a fake clock.

Example (a pytest test)::

    from poetctl.testing import Harness

    def test_notifier_retries_then_reports():
        h = Harness(max_attempts=3)
        calls = []

        def notify(event):
            calls.append(event.id)
            if len(calls) == 1:
                raise ConnectionError("endpoint down")  # retried with backoff
            h.router.emit("system.metrics", {"service": "notifier", "metrics": {"sent": 1}})

        h.router.subscribe("system.health", notify, name="notify")
        eid = h.router.emit("system.health", {"service": "trainer", "status": "degraded"})
        h.run_until_idle()            # the first attempt fails; the retry waits for its time
        assert h.state_of(eid) == "inflight" and len(calls) == 1
        h.clock.advance(60)           # no sleeping: move the clock past the backoff
        h.run_until_idle()
        assert h.state_of(eid) == "processed" and len(calls) == 2
        assert len(h.events(types=["system.metrics"])) == 1   # the follow-up, once

Nothing here sleeps or starts threads (unless a subscription has a timeout):
:meth:`Harness.run_until_idle` steps the daemon until nothing is due now;
:meth:`Harness.drain` also moves the clock to every retry until nothing is left.
Handlers raise :class:`poetctl.Permanent` to dead-letter at once and
:class:`poetctl.Retry` to pick the next attempt's time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .backends.memory import MemoryTransport
from .backends.memory.storage import MemoryStorage
from .config import Config
from .daemon.loop import Loop
from .daemon.middleware import Middleware
from .daemon.retries import RetryPolicy
from .router import EventRouter
from .schemas import SchemaRegistry
from .storage import Storage
from .transport import Query, State, Stored, Transport


class FakeClock:
    """A clock that moves only when told. Call it for the time; thread-safe."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); the new time."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward; got {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> float:
        """Move forward to ``when`` (never back); the new time."""
        with self._lock:
            self._now = max(self._now, float(when))
            return self._now


class Harness:
    """A router (``.router``) and a steppable daemon (``.daemon``) on one transport, with ``.clock``.

    The default transport is a fresh :class:`~poetctl.backends.memory.MemoryTransport`
    and the handlers' stores (``.router.stores``: function state, feedback, learning
    state) are in memory too, so the built-in handlers run here as well
    (:func:`poetctl.handlers.register_builtin`); ``storage`` replaces them.
    The daemon runs inline (one worker) with the given retry settings and middleware;
    ``timeouts`` maps handler names to time limits in seconds.
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        transport: Transport | None = None,
        config: Config | None = None,
        registry: SchemaRegistry | None = None,
        storage: Storage | None = None,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        policy: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        timeouts: Mapping[str, float] | None = None,
        fetch_limit: int = 256,
    ) -> None:
        self.clock = clock or FakeClock()
        self.transport: Transport = transport if transport is not None else MemoryTransport(clock=self.clock)
        self.router = EventRouter(
            transport=self.transport,
            config=config,
            registry=registry,
            storage=storage if storage is not None or transport is not None else MemoryStorage(self.clock),
        )
        self.policy = policy or RetryPolicy(max_attempts, backoff_base, backoff_cap)
        self._middleware = list(middleware)
        self._timeouts = dict(timeouts or {})
        self._fetch_limit = fetch_limit
        self.daemon = self.new_daemon()

    def new_daemon(self, consumer_name: str | None = None) -> Loop:
        """A daemon on a new consumer of the same transport (e.g. the one that starts after a crash)."""
        return Loop(
            self.transport.consumer(consumer_name),
            self.router.subscriptions,
            self.router,
            policy=self.policy,
            clock=self.clock,
            middleware=self._middleware,
            timeouts=self._timeouts,
            fetch_limit=self._fetch_limit,
        )

    def run_until_idle(self, max_rounds: int = 100_000) -> int:
        """Step the daemon until nothing is due at the current time; how many deliveries it leased or ran.

        Parked retries stay parked (advance the clock, or use :meth:`drain`).
        """
        total = 0
        for _ in range(max_rounds):
            n = self.daemon.step()
            total += n
            if n == 0 and self.daemon.finished():
                return total
        raise RuntimeError(f"still busy after {max_rounds} rounds: does a handler emit without end?")

    def drain(self, max_rounds: int = 100_000) -> int:
        """:meth:`run_until_idle`, moving the clock to each parked retry, until none is left."""
        total = self.run_until_idle(max_rounds)
        while (due := self.daemon.next_due()) is not None:
            if not isinstance(self.clock, FakeClock):
                raise RuntimeError("drain needs a FakeClock")
            self.clock.set(due)
            total += self.run_until_idle(max_rounds)
        return total

    def state_of(self, event_id: str) -> State | None:
        """``"pending"``, ``"inflight"``, ``"processed"``, ``"dead"``, ``"corrupt"`` or None."""
        return self.transport.state_of(event_id)

    def dead_letter(self, event_id: str) -> dict[str, Any] | None:
        """The dead letter's description (reason, attempts, error, history), or None if not dead."""
        s = self.transport.get(event_id)
        return s.info if s is not None and s.state is State.DEAD else None

    def events(self, **criteria: Any) -> list[Stored]:
        """Events matching :class:`~poetctl.transport.Query` criteria, oldest first."""
        return list(reversed(list(self.transport.select(Query(**criteria)))))

    def close(self) -> None:
        """Stop the daemon (handing back what it holds)."""
        self.daemon.close()


__all__ = ["FakeClock", "Harness"]
