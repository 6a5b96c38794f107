"""Correlation ids and durations for the daemon's failure records, as a middleware.

The daemon's log lines about a failed run (``handler failed``,
``dead-lettered``) are written where outcomes are applied, which knows the
event id and the attempt but not how long the run took. :class:`LogContext`
hands that over through :func:`poetctl.daemon.log.set_context` from
``after_handle``, on the same thread, just before the outcome is logged; the
log functions then add ``correlation_id`` and ``duration_ms``. It does
nothing for a run that succeeded (the per-event path stays as it was).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..daemon import log
from ..daemon.middleware import Middleware

if TYPE_CHECKING:
    from ..daemon.handling import Sub
    from ..event import Event


class LogContext(Middleware):
    """Pass a failed run's correlation id and duration to the log records that follow it."""

    def after_handle(self, event: Event, handler: Sub, seconds: float, error: BaseException | None) -> None:
        if error is not None:  # only failures: a success costs one comparison
            log.set_context(event.id, event.correlation_id, round(seconds * 1000, 3))


__all__ = ["LogContext"]
