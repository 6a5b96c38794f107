"""An asyncio connection for the bridge (the backend core's :class:`~.link.Link` runs its own loop thread;
the bridge lives on the caller's asyncio loop). Settings come from :class:`~.settings.NatsSettings`.
``nats`` is imported inside :meth:`AsyncLink.connect`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client

    from .settings import NatsSettings


@dataclass
class AsyncLink:
    """nats-py ``connect`` keyword arguments (servers, credentials, TLS) and a client name."""

    options: dict[str, Any] = field(default_factory=dict)
    name: str = "poetctl"
    last_error: str = ""

    @classmethod
    def from_settings(cls, settings: NatsSettings, name: str = "poetctl") -> AsyncLink:
        return cls(settings.connect_options(), name)

    @classmethod
    def to(cls, servers: list[str], name: str = "poetctl") -> AsyncLink:
        return cls({"servers": servers, "connect_timeout": 2.0}, name)

    async def connect(self) -> Client:
        """One connection that, once up, reconnects forever; raises if no server answers now (callers back off).

        nats-py would retry the *first* connect forever too with unlimited
        reconnects, so it connects with at most two tries per server and
        switches to unlimited reconnects afterwards. Client errors are kept in
        ``last_error`` instead of nats-py's logged tracebacks.
        """
        import nats

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"

        opts = {"reconnect_time_wait": 0.25, **self.options}
        opts.update(name=self.name, allow_reconnect=True, max_reconnect_attempts=1, error_cb=on_error)
        nc = await nats.connect(**opts)
        nc.options["max_reconnect_attempts"] = -1
        return nc
