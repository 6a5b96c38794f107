"""Reporting middleware of ``poetctl daemon``: the log lines of failures, and ``system.health``.

Both are generic (:class:`~.middleware.Middleware`); the daemon adds them,
:class:`poetctl.testing.Harness` does not (a unit test's output stays quiet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import log
from .middleware import Middleware
from .outcomes import EXHAUSTED, PERMANENT, Dead, Done, Failed

if TYPE_CHECKING:
    from ..transport import Delivery, Fetched
    from .outcomes import Outcome


class LogOutcomes(Middleware):
    """One log line per failed attempt (``handler failed``) and per dead letter (``dead-lettered``).

    Everything comes from the outcome (the attempt carries the error text and
    its traceback, so ``-v`` still shows where it was raised): no hook runs
    around each handler.
    """

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        if type(outcome) is Done:
            return
        ev = delivery.event
        if isinstance(outcome, Failed):
            a = outcome.attempt
            log.handler_failed(ev.id, ev.type, a.handler, a.error, a.attempt, self.max_attempts, a.traceback)
        elif isinstance(outcome, Dead):
            info = outcome.info
            attempts = int(info.get("attempts") or 0)
            if outcome.reason in (EXHAUSTED, PERMANENT) and info.get("handler"):
                error, tb = str(info.get("error")), str(info.get("traceback") or "")
                log.handler_failed(ev.id, ev.type, str(info["handler"]), error, attempts, self.max_attempts, tb)
            log.dead_lettered(ev.id, ev.type, outcome.reason, info.get("handler"), attempts, info.get("error"))

    def on_fetch(self, fetched: Fetched) -> None:
        for d in fetched.deliveries:
            died = d.record.died() if d.record.deliveries else 0
            if died:
                nxt = d.record.failures[-1].handler if d.record.failures else "?"
                log.died_while_handling(d.id, d.event.type, nxt, d.record.attempts + died, self.max_attempts)


class HealthReporter(Middleware):
    """Emits ``system.health`` every ``interval`` seconds (by ``clock``) from the loop's thread.

    ``emit`` is the router's; ``status()`` gives the figures. A failure to
    emit is logged and never stops processing.
    """

    def __init__(
        self,
        emit: Callable[..., Any],
        service: str,
        interval: float,
        clock: Callable[[], float],
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.emit = emit
        self.service = service
        self.interval = interval
        self.clock = clock
        self.status = status
        self.healthy = healthy
        self.due = clock() + interval

    def on_fetch(self, fetched: Fetched) -> None:
        now = self.clock()
        if now < self.due:
            return
        self.due = now + self.interval
        s = self.status()
        try:
            self.emit(
                "system.health",
                {
                    "service": self.service,
                    "status": "healthy" if self.healthy() else "unhealthy",
                    "host": s["host"],
                    "pid": s["pid"],
                    "uptime_seconds": round(now - s["started_at"], 3),
                    "details": {"counts": s["counts"], "lag_seconds": s["lag_seconds"], "inflight": s["inflight"]},
                },
                source="poetctl.daemon",
            )
        except Exception as exc:  # health reporting must never stop processing
            log.warning("cannot emit system.health", error=log.error_text(exc))


__all__ = ["HealthReporter", "LogOutcomes"]
