"""What the app serves from: the spool (``local_only``, ``hybrid``) or NATS JetStream (``nats``).

The app never touches a backend directly: blocking work (validation that may
look ids up, commits, lookups) goes through :meth:`Backend.call`, which runs it
off the event loop, and the feedback page and the PagerDuty webhook find
events through :meth:`Backend.event` / :meth:`Backend.alert_of`.

* :class:`SpoolBackend`: the spool, as ``serve`` always did (the thread pool;
  concurrent commits share one group flush). ``hybrid`` serves the spool too:
  the daemon's forwarder carries what is committed there on to JetStream, and
  ``/readyz`` also checks that a NATS server accepts connections.
* :class:`~.natsmode.NatsBackend` (``nats``): a lazily connected
  :class:`~poetctl.backends.nats.transport.NatsTransport`, calls bounded by a deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..event import Event

T = TypeVar("T")


class Backend(Protocol):
    """The app's view of where events go and come from."""

    kind: str  # "spool" or "nats"
    router: Any  # an EventRouter: validates and seals (router.build), commits (router.commit_events)

    def where(self) -> str:
        """What the server serves, for the start-up line (``spool /path``, ``NATS nats://...``)."""
        ...

    async def call(self, fn: Callable[..., T], *args: Any, check: bool = True) -> T:
        """``fn(*args)`` off the event loop; a backend that cannot answer raises BackendUnavailable.

        ``check`` False: ``fn`` may not need the backend at all (validation), so do not refuse it up front.
        """
        ...

    def event(self, event_id: str) -> Event | None:
        """The event ``event_id`` in any state but quarantine, or None (blocking: run it through :meth:`call`)."""
        ...

    def alert_of(self, correlation_id: str) -> Event | None:
        """The newest ``alert.create_external`` of ``correlation_id``, or None (blocking)."""
        ...

    async def readiness(self) -> dict[str, str]:
        """Each check's verdict for ``/readyz``: ``ok`` or the problem (one line)."""
        ...

    def health(self) -> dict[str, str]:
        """Extra fields for ``/healthz`` (never blocks: read on the event loop)."""
        ...

    def close(self) -> None: ...


class SpoolBackend:
    """The filesystem spool of ``router``; ``nats_servers`` (hybrid: the forwarder's target) join ``/readyz``."""

    kind = "spool"

    def __init__(self, router: Any, nats_servers: list[str] | None = None) -> None:
        self.router = router
        self.layout = router.layout
        self.nats_servers = list(nats_servers or [])

    def where(self) -> str:
        return f"spool {self.layout.root}"

    async def call(self, fn: Callable[..., T], *args: Any, check: bool = True) -> T:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args)

    def event(self, event_id: str) -> Event | None:
        from ..backends.fs.query import find

        f = find(self.layout, event_id)
        return f.event if f is not None else None

    def alert_of(self, correlation_id: str) -> Event | None:
        from .pagerduty import find_alert

        return find_alert(self.layout, correlation_id)

    async def readiness(self) -> dict[str, str]:
        from . import health

        return await self.call(health.readiness, self.layout, self.nats_servers)

    def health(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


__all__ = ["Backend", "SpoolBackend"]
