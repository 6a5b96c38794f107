"""The generic loop's log records, as a middleware: handler failures and dead letters.

The generic :class:`~poetctl.daemon.loop.Loop` logs nothing itself; this
middleware writes the records the old fs worker wrote from its own code
(``handler failed``, ``dead-lettered``), with the fields the loop knows
there: ``correlation_id`` and ``duration_ms`` besides id, type, handler and
attempt. Quarantines, unreadable files and recoveries stay with the
consumer that sees them (it calls :mod:`poetctl.daemon.log` directly).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..daemon import log
from ..daemon.middleware import Middleware
from ..daemon.outcomes import DIED, EXPIRED, Dead, Failed

if TYPE_CHECKING:
    from ..daemon.handling import Sub
    from ..daemon.outcomes import Outcome
    from ..event import Event
    from ..transport import Delivery


class LogMiddleware(Middleware):
    """Log each handler failure (WARN) and each dead letter (ERROR) with the event's ids."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self._local = threading.local()  # the failed run's (event id, handler, error, ms), for on_outcome

    def after_handle(self, event: Event, handler: Sub, seconds: float, error: BaseException | None) -> None:
        if error is not None:  # only failures: a success costs one comparison
            self._local.failed = (event.id, handler.name, error, round(seconds * 1000, 3))

    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        if not isinstance(outcome, Failed | Dead):
            return
        ev = delivery.event
        failed = getattr(self._local, "failed", None)
        self._local.failed = None
        if failed is not None and failed[0] == ev.id:
            _, handler, exc, ms = failed
            n = outcome.attempt.attempt if isinstance(outcome, Failed) else int(outcome.info.get("attempts") or 0)
            if isinstance(outcome, Dead):
                history = outcome.info.get("history") or []
                n = int(history[-1].get("attempt", n)) if history else n
            log.handler_failed(
                ev.id, ev.type, handler, exc, n, self.max_attempts, correlation_id=ev.correlation_id, duration_ms=ms
            )
        if isinstance(outcome, Dead):
            info = outcome.info
            if outcome.reason == DIED and info.get("history"):
                last = info["history"][-1]
                log.died_while_handling(
                    ev.id, ev.type, str(last.get("handler")), int(last.get("attempt", 0)), self.max_attempts
                )
            log.dead_lettered(
                ev.id,
                ev.type,
                outcome.reason,
                None if outcome.reason == EXPIRED else info.get("handler"),
                int(info.get("attempts") or 0),
                info.get("error"),
                correlation_id=ev.correlation_id,
            )


__all__ = ["LogMiddleware"]
