"""``poetctl serve``: the HTTP server (events in, PagerDuty webhooks, the feedback page, health, metrics)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..configspec import bounds
from .common import ConfigOpt, ModeOpt, SpoolOpt, errors_to_exit, load


@errors_to_exit
def serve_cmd(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default: [serve] host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", **bounds("serve", "port"), help="Port (default: [serve] port, 8470; 0 picks a free one)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info or debug.")] = "info",
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Serve POST /events, POST /webhooks/pagerduty, the feedback page /poet/feedback/<id>, /healthz, /readyz, /metrics.

    Listens on 127.0.0.1:8470 unless told otherwise; put it behind a reverse
    proxy for TLS. Prints the address it listens on to stderr, then serves
    until SIGINT/SIGTERM (requests in flight are finished). Secrets come from
    [serve] token / feedback_secret / pagerduty_secret as env:NAME or
    file:PATH and are never logged.

    In delivery mode nats (--mode nats, POET_MODE, delivery_mode) events go to
    the JetStream stream ([nats] servers / POET_NATS_URL) and the feedback page
    reads alerts from it; no spool is needed. It starts even while NATS is down:
    /readyz answers 503 and requests 503 (one-line JSON) until it is back.
    local_only and hybrid serve the spool (hybrid's daemon forwards it to NATS).

    Exit codes: 0 stopped by SIGINT/SIGTERM, 2 bad option, 66 no spool, 69 address in use, 74 spool not
    writable, 78 bad configuration (or a configured secret that is unset).
    """
    from ..errors import UsageError
    from ..router import EventRouter
    from ..serve.runner import serve
    from ..serve.settings import ServeSettings
    from .mode import resolve_mode

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise UsageError(f"--log-level {log_level!r}: expected critical, error, warning, info or debug")
    cfg = load(spool, config)
    settings = ServeSettings.from_config(cfg)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    delivery = resolve_mode(mode, cfg)
    backend: Any
    if delivery == "nats":
        from ..serve.natsmode import NatsBackend

        backend = NatsBackend(cfg)  # a bad [nats] table exits 78 here; an unreachable server does not stop it
        backend.start()
    else:
        from ..serve.backend import SpoolBackend

        router = EventRouter(config=cfg, create_spool=False)
        router.layout.require()
        router.layout.require_real(router.layout.events, router.layout.tmp, router.layout.pending)
        # hybrid: /readyz also checks that the forwarder's NATS accepts connections.
        backend = SpoolBackend(router, settings.nats_servers if delivery == "hybrid" else [])
    serve(settings, backend, log_level)
