"""``poetctl serve``: the HTTP server (events in, PagerDuty webhooks, the feedback page, health, metrics)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..configspec import bounds
from .common import ConfigOpt, SpoolOpt, errors_to_exit, load


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
) -> None:
    """Serve POST /events, POST /webhooks/pagerduty, the feedback page /poet/feedback/<id>, /healthz, /readyz, /metrics.

    Listens on 127.0.0.1:8470 unless told otherwise; put it behind a reverse
    proxy for TLS. Prints the address it listens on to stderr, then serves
    until SIGINT/SIGTERM (requests in flight are finished). Secrets come from
    [serve] token / feedback_secret / pagerduty_secret as env:NAME or
    file:PATH and are never logged.

    Exit codes: 0 stopped by SIGINT/SIGTERM, 2 bad option, 66 no spool, 69 address in use, 74 spool not
    writable, 78 bad configuration (or a configured secret that is unset).
    """
    from ..errors import UsageError
    from ..router import EventRouter
    from ..serve.runner import serve
    from ..serve.settings import ServeSettings

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise UsageError(f"--log-level {log_level!r}: expected critical, error, warning, info or debug")
    cfg = load(spool, config)
    settings = ServeSettings.from_config(cfg)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    router = EventRouter(config=cfg, create_spool=False)
    router.layout.require()
    router.layout.require_real(router.layout.events, router.layout.tmp, router.layout.pending)
    serve(settings, router, log_level)
