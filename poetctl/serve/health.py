"""``/healthz`` (the process answers), ``/readyz`` on the spool (it can be written; in hybrid mode the
forwarder's NATS accepts connections). In nats mode readiness is :meth:`~.natsmode.NatsBackend.readiness`.

Readiness writes and removes a probe file in ``events/tmp`` (created with
O_EXCL|O_NOFOLLOW, where only commits write and readers never look): a
read-only or full spool is "not ready" before the first emit fails.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

PROBE_TIMEOUT = 2.0


def spool_check(layout: Any) -> str | None:
    """None if the spool is there and writable, else why not."""
    from ..errors import PoetError

    try:
        layout.require().require_real(layout.events, layout.tmp, layout.pending)
    except PoetError as exc:
        return exc.message
    from ..backends.fs.safefs import probe_writable

    return probe_writable(layout)


def nats_check(servers: list[str]) -> str | None:
    """None if a TCP connection to one of ``servers`` (nats://host:port) opens, else why not."""
    problems = []
    for url in servers:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
                return None
        except OSError as exc:
            problems.append(f"{host}:{port}: {exc.strerror or exc}")
    return "NATS unreachable (" + "; ".join(problems) + ")" if problems else None


def readiness(layout: Any, nats_servers: list[str]) -> dict[str, str]:
    """Each check's verdict: ``ok`` or the problem."""
    out = {"spool": spool_check(layout) or "ok"}
    if nats_servers:
        out["nats"] = nats_check(nats_servers) or "ok"
    return out


def metrics_app() -> Any | None:
    """prometheus-client's exposition of the process registry, or None if it is not installed."""
    try:
        from prometheus_client import make_asgi_app
    except ImportError:
        return None
    return make_asgi_app()
