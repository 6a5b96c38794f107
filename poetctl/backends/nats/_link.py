"""Private helpers of the hybrid forwarder and the bridge until the backend core's subjects/connect land.

Kept small on purpose: the lead swaps these for ``subjects``/``connect`` of
the NATS backend core at merge. ``nats`` is imported inside the functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client

DEFAULT_URL = "nats://127.0.0.1:4222"
STREAM = "POET"
SUBJECT_PREFIX = "poet"


def subject_of(topic: str) -> str:
    """``poet/functions/detect_drift/execution`` -> ``poet.functions.detect_drift.execution``.

    Topic segments are ``[A-Za-z0-9_-]`` (see :mod:`poetctl.topics`), so no
    segment can hold ``.``, ``*``, ``>`` or whitespace; anything else is
    escaped reversibly as ``%XX`` anyway so a subject is always one token per segment.
    """
    parts = topic.split("/")
    return ".".join(_escape(p) for p in parts)


def _escape(token: str) -> str:
    if token and all(c.isalnum() or c in "_-" for c in token) and token.isascii():
        return token
    return (
        "".join(
            c if (c.isascii() and (c.isalnum() or c in "_-")) else "".join(f"%{b:02X}" for b in c.encode())
            for c in token
        )
        or "%"
    )


def servers_from(value: str | None = None) -> list[str]:
    """Server URLs: ``value``, else ``POET_NATS_URL`` (comma-separated), else ``nats://127.0.0.1:4222``."""
    raw = value if value is not None else os.environ.get("POET_NATS_URL", DEFAULT_URL)
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    return servers or [DEFAULT_URL]


@dataclass
class Link:
    """Where and how to connect: servers, and nats-py options (credentials, TLS) passed as they are."""

    servers: list[str] = field(default_factory=lambda: [DEFAULT_URL])
    name: str = "poetctl"
    options: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""

    async def connect(self, *, connect_timeout: float = 2.0) -> Client:
        """One connection that, once up, reconnects forever; raises if no server answers now (callers back off).

        nats-py would retry the *first* connect forever too with unlimited
        reconnects, so it connects with at most two tries per server and
        switches to unlimited reconnects afterwards. Client errors are kept in
        ``last_error`` instead of nats-py's logged tracebacks.
        """
        import nats

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"

        nc = await nats.connect(
            servers=self.servers,
            name=self.name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.25,
            error_cb=on_error,
            # Forwarding must see failures, not buffer megabytes into a dead socket.
            pending_size=8 * 1024 * 1024,
            **self.options,
        )
        nc.options["max_reconnect_attempts"] = -1
        return nc


async def ensure_stream(js: Any, *, name: str = STREAM, subjects: list[str] | None = None, replicas: int = 1) -> None:
    """Create the event stream if missing (tests and the bench; ``poetctl nats setup`` does this for users)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=subjects or [f"{SUBJECT_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
        )
    )
