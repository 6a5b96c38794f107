"""Run the app on uvicorn: bind first (so ``--port 0`` works and the address is printed), then serve.

uvicorn's own access log is off (it would log query strings, which carry
feedback-link tokens); :class:`~poetctl.serve.app.AccessLog` logs paths only.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from ..errors import PoetError
from .settings import ServeSettings


class BindError(PoetError):
    exit_code = 69  # EX_UNAVAILABLE: the address is taken or not ours


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings, router: Any, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM (uvicorn finishes in-flight requests, then returns)."""
    import uvicorn

    from .app import build_app

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("poetctl serve: %(message)s"))
    log = logging.getLogger("poetctl.serve")
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    log.propagate = False

    app = build_app(settings, router)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"poetctl serve: listening on http://{shown}:{port} (spool {router.layout.root})\n")
    sys.stderr.flush()
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_keep_alive=max(1, round(settings.keepalive_timeout)),
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.max_connections,
        proxy_headers=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
