"""The subscription registry: which handlers run for which event types (part of the router)."""

from __future__ import annotations

import math
from collections.abc import Callable

from .errors import UsageError
from .event import Event
from .topics import check_subscription
from .valueclass import ValueClass

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    Handler = Callable[[Event], Any]
else:
    Handler = Callable[[Event], object]  # the same alias at run time, without typing


class Subscription(ValueClass):
    """A handler registered for a type or a glob of types (``drift.*``).

    ``timeout``: seconds the handler may run before the daemon fails it with
    :class:`~poetctl.daemon.outcomes.HandlerTimeout` (None: no limit).
    """

    # Written out, not a dataclass (same constructor, repr and equality): see poetctl.valueclass.
    __slots__ = _fields = ("pattern", "fn", "name", "timeout")

    def __init__(self, pattern: str, fn: Handler, name: str, timeout: float | None = None) -> None:
        self.pattern = pattern
        self.fn = fn
        self.name = name
        self.timeout = timeout


class SubscriptionRegistry:
    """The handlers a daemon runs, in registration order (``.subscriptions``, a list)."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def subscribe(self, pattern: str, fn: Handler, *, name: str | None = None, timeout: float | None = None) -> None:
        """Run ``fn(event)`` for every event whose type matches ``pattern`` (a type or glob).

        ``name`` identifies the handler in completion records and derived ids;
        it defaults to ``module.qualname`` and must be stable across restarts.
        ``timeout`` (seconds, > 0) fails a run that takes longer, so one slow
        endpoint cannot hold the other keys of its worker; the run itself
        cannot be stopped (a Python thread), so its effects still happen and
        its follow-ups are dropped. Raises :class:`~poetctl.errors.UsageError`
        for a pattern that can never match a type, an unsafe name (see
        :func:`poetctl.topics.check_subscription`) or a bad timeout.
        """
        hname = name
        if hname is None:
            hname = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        check_subscription(pattern, hname)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise UsageError(f"handler {hname!r}: timeout must be a positive number of seconds, got {timeout!r}")
        self.subscriptions.append(Subscription(pattern, fn, hname, None if timeout is None else float(timeout)))


__all__ = ["Handler", "Subscription", "SubscriptionRegistry"]
