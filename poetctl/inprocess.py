"""Handling events inside the emitting process, with the daemon's guarantees.

:class:`InProcess` is a base of :class:`~poetctl.router.EventRouter`; it adds

* ``start(workers=)``: the generic daemon loop on background threads - on the
  spool the very :class:`~poetctl.daemon.core.Daemon` of ``poetctl daemon``
  (its consumer, claims, retries, dead letters, per-key order, recovery of
  dead consumers), on other backends a :class:`~poetctl.daemon.loop.Loop`
  over ``transport.consumer()``. It is one more consumer of the spool, so a
  ``poetctl daemon`` beside it shares the work and nothing is handled twice;
* ``run_until_idle(timeout=)``: handle everything due now, then return (for
  scripts and notebooks; started or not);
* ``close()`` / ``with router:``: stop gracefully, hand back what is in flight;
* inline dispatch (``emit(..., dispatch="inline")``, :mod:`poetctl.inline`);
* the seed's correlation API (``correlation_tracker``, ``get_correlated_events``).

Every consumer of one spool (this one, ``poetctl daemon``) must subscribe the
same handlers: an event is handled once, by whichever consumer leases it,
with that consumer's subscriptions.
"""

from __future__ import annotations

from .errors import UsageError

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from .consuming import Consuming
    from .event import Event
    from .inline import InlineDispatcher
    from .router import EventRouter
    from .seedapi import CorrelationTracker

DISPATCH_MODES = ("queue", "inline")


def check_dispatch(dispatch: str) -> str:
    """``dispatch`` if it is a known mode; else a UsageError naming the choices."""
    if dispatch not in DISPATCH_MODES:
        raise UsageError(f"dispatch {dispatch!r}: expected one of {', '.join(DISPATCH_MODES)}")
    return dispatch


def check_inline_backend(router: EventRouter) -> None:
    """Refuse inline dispatch on a backend that cannot lease a given event (NATS pulls by partition)."""
    from .backends.memory import MemoryTransport

    t = router.transport
    if getattr(t, "layout", None) is None and not isinstance(t, MemoryTransport):
        raise UsageError(
            f"dispatch='inline' needs the filesystem spool or the memory backend; {type(t).__name__} "
            "cannot lease one event out of turn: use dispatch='queue' with router.start() or a daemon"
        )


class InProcess:
    """The in-process half of :class:`~poetctl.router.EventRouter` (see the module docstring)."""

    _consuming: Consuming | None = None
    _inline: InlineDispatcher | None = None
    _tracker: CorrelationTracker | None = None

    def start(self, workers: int | None = None) -> EventRouter:
        """Handle events on background threads of this process until :meth:`close`; returns the router.

        ``workers``: handler threads (default: poet.toml ``[daemon] workers``, 4).
        The same daemon loop as ``poetctl daemon``: claims (so a daemon beside it
        shares the spool, nothing handled twice), retries with backoff, dead
        letters, per-key order, recovery of dead consumers' events. Handlers are
        this router's subscriptions; subscribe them all before ``start``.
        """
        router: EventRouter = self  # type: ignore[assignment]
        if self._consuming is not None and self._consuming.running:
            raise UsageError("already started: close() it first")
        from .consuming import Consuming

        c = self._consuming = Consuming(router, workers)  # before its threads run: handlers may look
        try:
            c.start()
        except BaseException:
            self._consuming = None
            c.stop()
            raise
        return router

    def run_until_idle(self, timeout: float | None = None) -> int:
        """Handle everything due now, then return how many events were finished (processed or dead).

        Started: waits until the background consumer finds nothing due.
        Not started: runs a consumer on this thread (handlers run here), then
        closes it; retries not due yet are handed back for a later call, a
        started consumer or a daemon. TimeoutError after ``timeout`` seconds.
        """
        c = self._consuming
        if c is not None and c.running:
            return c.wait_idle(timeout)
        from .consuming import Consuming

        return Consuming(self, 1, stepped=True).step_until_idle(timeout)  # type: ignore[arg-type]

    def close(self) -> list[str]:
        """Stop in-process handling: running handlers finish, the rest is handed back; the ids handed back.

        Idempotent. Emitting still works afterwards (the events wait for a consumer).
        """
        released: list[str] = []
        c = self._consuming
        if c is not None:
            released = c.stop()
            self._consuming = None
        d, self._inline = self._inline, None
        if d is not None:
            d.close()
        return released

    @property
    def consuming(self) -> Consuming | None:
        """The in-process consumer while started (its ``loop``, ``stop_requested``), else None."""
        return self._consuming

    def __enter__(self) -> EventRouter:
        return self  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inline dispatch --------------------------------------------------------------------------
    def _dispatch_inline(self, event: Event) -> None:
        d = self._inline
        if d is None:
            from .inline import InlineDispatcher

            d = self._inline = InlineDispatcher(self)  # type: ignore[arg-type]
        d.dispatch(event)

    # -- the seed's correlation API ----------------------------------------------------------------
    @property
    def correlation_tracker(self) -> CorrelationTracker:
        """``get_events(correlation_id)``: the ids of a correlation group, oldest first (from the backend's index)."""
        if self._tracker is None:
            from .seedapi import CorrelationTracker

            self._tracker = CorrelationTracker(self)  # type: ignore[arg-type]
        return self._tracker

    def get_correlated_events(self, correlation_id: str | None) -> list[str]:
        """The seed's name: :meth:`CorrelationTracker.get_events` (an empty list for None)."""
        return self.correlation_tracker.get_events(correlation_id) if correlation_id else []


__all__ = ["DISPATCH_MODES", "InProcess", "check_dispatch", "check_inline_backend"]
