"""Run the app on uvicorn: bind first (so ``--port 0`` works and the address is printed), then serve.

uvicorn's own access log is off (it would log query strings, which carry
feedback-link tokens); :class:`~poetctl.serve.app.AccessLog` logs paths only.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
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


def serve(settings: ServeSettings, backend: Any, log_level: str = "info") -> None:
    """Serve ``backend`` (:mod:`.backend`) until SIGINT/SIGTERM (in-flight requests are finished; a second
    signal stops at once), then close it and return."""
    import uvicorn

    from .app import build_app

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("poetctl serve: %(message)s"))
    log = logging.getLogger("poetctl.serve")
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    log.propagate = False

    app = build_app(settings, backend)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"poetctl serve: listening on http://{shown}:{port} ({backend.where()})\n")
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
    # uvicorn re-raises a captured SIGTERM after its graceful shutdown (the process then dies of
    # it); a command should exit 0 once it stopped cleanly. So uvicorn runs in a thread (where it
    # installs no signal handlers) and this thread turns signals into its public stop flags.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)

    def stop(signum: int, frame: Any) -> None:
        if server.should_exit:
            server.force_exit = True  # a second signal: do not wait for open requests
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sock.close()
        backend.close()
    if not server.started:
        raise BindError("the server did not start (see the messages above)")
