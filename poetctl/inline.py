"""Inline dispatch: ``emit`` runs the matching local subscribers before it returns, safely.

The seed's router called its subscribers inside ``emit`` (``_deliver_local``)
and forgot a failure. Here ``emit(..., dispatch="inline")`` (or a router made
with ``dispatch="inline"``):

1. commits the event durably, as every emit does;
2. leases it through this router's own inline consumer - a real lease, the
   same the daemon takes (the spool: the rename into ``inflight/<owner>/``
   under the key's bucket lock), so a daemon beside it cannot run it too,
   and if this process dies inside a handler the event is recovered by the
   next consumer, the death counted as an attempt;
3. runs the handlers exactly as a daemon worker does
   (:meth:`~poetctl.daemon.handling.KeyWorker.handle_now`: expiry, attempts,
   upcasting, finished handlers skipped, time limits, follow-ups committed
   only if the handler succeeds);
4. applies the outcome: ack; a dead letter; or, for a failure, the attempt is
   recorded and the event is handed back to ``pending/`` with its retry time,
   so any consumer (an in-process one, ``poetctl daemon``) retries it. The
   failure is logged (logger ``poetctl.daemon``); ``emit`` never raises for it.
5. dispatches the follow-ups those handlers committed the same way, breadth
   first, before returning (the hop limit bounds the chain).

The event is left to the consumers, and ``emit`` returns at once, when no local
subscriber matches, or when per-key order forbids running it now: another
event of its key is pending, waiting for a retry or being handled elsewhere
(see :mod:`poetctl.backends.fs.inline` for the spool's rules).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Protocol

from .daemon import log
from .daemon.handling import Job, KeyWorker, Sub
from .daemon.middleware import Hooks, Stats
from .daemon.outcomes import Dead, Done, Failed, Outcome
from .daemon.reporting import LogOutcomes
from .daemon.retries import RetryPolicy
from .errors import UsageError
from .event import Event
from .inprocess import check_inline_backend
from .transport import Consumer, Delivery

if TYPE_CHECKING:
    from .router import EventRouter


class LeasingConsumer(Consumer, Protocol):
    """A consumer that can lease one given event out of turn (the spool's and memory's can)."""

    def lease(self, event: Event) -> Delivery | None: ...


def retry_policy(router: EventRouter) -> RetryPolicy:
    """The ``[daemon]`` retry settings of the router's configuration (as ``poetctl daemon`` uses them)."""
    d = dict(router.config.daemon)
    return RetryPolicy(
        int(d.get("max_attempts", 5)), float(d.get("backoff_base", 1.0)), float(d.get("backoff_cap", 60.0))
    )


class _Chain:
    """The router as the worker's cause context; remembers the follow-ups it commits (to dispatch them next)."""

    def __init__(self, router: EventRouter, queue: deque[Event]) -> None:
        self.router = router
        self.set_cause = router.set_cause
        self.queue = queue

    @property
    def upcasters(self) -> Any:
        return self.router.upcasters

    def commit_events(self, built: list[tuple[Event, bool]]) -> list[bool]:
        added = self.router.commit_events(built)
        self.queue.extend(ev for (ev, _), new in zip(built, added, strict=True) if new)
        return added


class InlineDispatcher:
    """One router's inline consumer and the per-thread workers that run handlers on the emitting thread."""

    def __init__(self, router: EventRouter) -> None:
        check_inline_backend(router)
        self.router = router
        self.policy = retry_policy(router)
        clock: Callable[[], float] = getattr(router.transport, "clock", None) or _now
        self.clock = clock
        self.stats = Stats(clock)
        self.hooks = Hooks([self.stats, LogOutcomes(self.policy.max_attempts)])
        self._consumer: LeasingConsumer | None = None
        self._lease_lock = threading.Lock()
        self._local = threading.local()
        self._workers: list[KeyWorker] = []
        self._closed = False

    # -- the consumer -------------------------------------------------------------------------
    def consumer(self) -> LeasingConsumer:
        with self._lease_lock:
            if self._consumer is None:
                if self._closed:
                    raise UsageError("the router is closed: inline dispatch is over")
                self._consumer = self._make_consumer()
            return self._consumer

    def _make_consumer(self) -> LeasingConsumer:
        r = self.router
        if getattr(r.transport, "layout", None) is not None:
            from .backends.fs.inline import InlineFsConsumer
            from .partition import DEFAULT_PARTITION_KEY, key_function

            d = dict(r.config.daemon)
            c: LeasingConsumer = InlineFsConsumer(
                r.transport,  # type: ignore[arg-type]
                registry=r.registry,
                validate=r.config.validation,
                key_of=key_function(tuple(d.get("partition_key", DEFAULT_PARTITION_KEY))),
                heartbeat_interval=float(d.get("heartbeat_interval", 2.0)),
                lease_seconds=float(d.get("lease_seconds", 30.0)),
                index=bool(d.get("index", True)),
            )
            c.recover()  # a process that died inside an inline handler: its event is due again
            return c
        return r.transport.consumer()  # type: ignore[return-value]

    def _worker(self, chain: _Chain) -> KeyWorker:
        w: KeyWorker | None = getattr(self._local, "worker", None)
        if w is None:
            w = KeyWorker(0, self.consumer(), chain, self.policy, self.clock, self.hooks, _no_report)
            w.name = f"poetctl-inline-{threading.get_ident()}"
            self._local.worker = w
            with self._lease_lock:
                self._workers.append(w)
        w.cause = chain
        return w

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, event: Event) -> None:
        """Run ``event``'s local subscribers now (and then its follow-ups'); never raises for a handler."""
        if not _subs_for(self.router.subscriptions, event.type):
            return
        queue: deque[Event] = deque((event,))
        chain = _Chain(self.router, queue)
        consumer = self.consumer()
        worker = self._worker(chain)
        try:
            while queue:
                ev = queue.popleft()
                subs = _subs_for(self.router.subscriptions, ev.type)
                if not subs:
                    continue
                with self._lease_lock:
                    d = consumer.lease(ev)
                if d is None:
                    log.info("inline dispatch: left for the consumers (per-key order)", id=ev.id, type=ev.type)
                    continue
                try:
                    outcome = worker.handle_now(Job(d, subs))
                except BaseException:
                    consumer.release([d])  # a middleware or backend failure, not a handler's: hand it back
                    raise
                self._apply(consumer, d, outcome)
        finally:
            settle = getattr(consumer, "settle", None)
            if settle is not None:
                settle()

    def _apply(self, c: LeasingConsumer, d: Delivery, outcome: Outcome) -> None:
        if isinstance(outcome, Done):
            c.ack(d)
        elif isinstance(outcome, Failed):
            c.fail(d, outcome.attempt, outcome.retry_at)
            c.release([d])  # any consumer retries it at retry_at
        elif isinstance(outcome, Dead):
            c.dead(d, outcome.reason, outcome.info)
        self.hooks.on_outcome(d, outcome)

    def close(self) -> None:
        """Close the inline consumer (nothing is leased between emits) and the workers' helper threads."""
        with self._lease_lock:
            self._closed = True
            c, self._consumer = self._consumer, None
            workers, self._workers = self._workers, []
        for w in workers:
            w.runner.close()
        if c is not None:
            c.close()


def _subs_for(subscriptions: list[Any], event_type: str) -> tuple[tuple[Sub, float | None], ...]:
    return tuple(
        (s, getattr(s, "timeout", None))
        for s in subscriptions
        if s.pattern == event_type or fnmatchcase(event_type, s.pattern)
    )


def _no_report(d: Delivery, outcome: Outcome) -> None:
    return None


def _now() -> float:
    import time

    return time.time()


__all__ = ["InlineDispatcher", "LeasingConsumer", "retry_policy"]
