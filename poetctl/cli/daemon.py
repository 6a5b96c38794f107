"""``poetctl daemon``: process the spool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..configspec import bounds
from .common import ConfigOpt, SpoolOpt, errors_to_exit, load


def daemon_cmd(
    handlers: Annotated[
        list[str] | None,
        typer.Option("--handlers", help="Handler module (pkg.mod or file.py) with register(router); repeatable."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", **bounds("daemon", "workers"), help="Worker threads (default 4).")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Handle everything due, then exit (for cron and CI).")] = False,
    rescan: Annotated[
        float | None,
        typer.Option(
            "--rescan-interval", **bounds("daemon", "rescan_interval"), help="Seconds between full rescans (default 5)."
        ),
    ] = None,
    no_builtin: Annotated[
        bool, typer.Option("--no-builtin-handlers", help="Do not load the built-in ML-monitoring handlers.")
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More detail in the log (-v: where handlers failed).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log only dead letters, quarantines and errors.")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="local_only, nats or hybrid (default: POET_MODE, then delivery_mode)."),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level", help="error, warn, info or debug (else POET_LOG_LEVEL; wins over -q/-v).", show_default=False
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="json or console (default: console on a terminal, else JSON lines).",
            show_default=False,
        ),
    ] = None,
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            "--metrics-addr",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464.",
            show_default=False,
        ),
    ] = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Process events: claim, run handlers, retry, dead-letter, recover.

    Handler modules come from --handlers and poet.toml's `handlers`. The first
    SIGINT/SIGTERM finishes or hands back in-flight events and exits 0; a
    second exits at once (130). Nothing is lost either way.

    With --once, exit codes are: 0 all due events processed; 1 some were
    dead-lettered, expired or quarantined; 75 some wait for a retry or cannot
    be read yet (run again later).

    The log on stderr has one record per line for each handler failure,
    dead letter, quarantine, unreadable file, recovery and alert: JSON lines
    (ts, level, msg, event_id, correlation_id, type, handler, attempt,
    duration_ms, ...) when stderr is not a terminal, a readable coloured
    line on one (--log-format). Never payloads; credentials are masked.
    -q keeps errors (dead letters, quarantines); -v adds debug detail;
    --log-level / POET_LOG_LEVEL choose exactly.

    --metrics-addr serves Prometheus metrics (bind loopback unless you mean
    otherwise); [alerts] in poet.toml sets when system.alert events fire.
    """
    from ..daemon import log

    if verbose and quiet:
        raise typer.BadParameter("use either --verbose or --quiet", param_hint="'-v' / '-q'")
    try:
        log.setup(-1 if quiet else verbose, level=log_level, fmt=log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--log-level' / '--log-format' / POET_LOG_LEVEL") from None
    if metrics_addr is not None:
        from ..observability.metrics import parse_addr

        try:
            parse_addr(metrics_addr)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--metrics-addr'") from None
    code = _daemon(handlers or [], workers, once, rescan, no_builtin, spool, config, mode, metrics_addr)
    raise typer.Exit(code)


@errors_to_exit
def _daemon(
    handlers: list[str],
    workers: int | None,
    once: bool,
    rescan: float | None,
    no_builtin: bool,
    spool: Path | None,
    config: Path | None,
    mode: str | None = None,
    metrics_addr: str | None = None,
) -> int:
    from ..daemon import log
    from ..daemon.core import Daemon, DaemonOptions, install_signal_handlers
    from ..daemon.loader import load_handlers
    from ..router import EventRouter
    from .mode import resolve_mode

    cfg = load(spool, config)
    delivery = resolve_mode(mode, cfg)
    if delivery == "nats":
        from .daemon_nats import run_nats

        return run_nats(cfg, handlers, workers, once, builtin=not no_builtin, metrics_addr=metrics_addr)
    opts = DaemonOptions.from_config(dict(cfg.daemon), workers=workers, once=once or None, rescan_interval=rescan)
    router = EventRouter(config=cfg)
    if not no_builtin:
        from ..handlers import register_builtin

        register_builtin(router)
    load_handlers(router, [*cfg.handlers, *handlers])
    from ..observability.wiring import daemon_observability

    forwarder = _start_forwarder(cfg, router.layout) if delivery == "hybrid" else None
    fwd = (lambda: forwarder.stats.backlog) if forwarder is not None else None  # the backlog gauges (hybrid)
    try:
        obs = daemon_observability(
            router, cfg, lease_seconds=opts.lease_seconds, metrics_addr=metrics_addr, forward=fwd
        )
    except BaseException:
        if forwarder is not None:
            forwarder.stop()
        raise
    try:
        d = Daemon(router, opts, middleware=obs.middleware)
    except BaseException:
        obs.close()
        if forwarder is not None:
            forwarder.stop()
        raise
    install_signal_handlers(d)
    log.info(
        f"daemon {d.owner} on {cfg.spool} with {opts.workers} worker(s), "
        f"{len(router.subscriptions)} handler(s){' (once)' if opts.once else ''}",
        metrics=obs.url,
    )
    try:
        code = d.run()
    finally:
        if forwarder is not None:
            forwarder.stop()
        obs.close()
    c = d.counters
    log.info(
        f"daemon stopped: processed={c.processed} dead={c.dead} expired={c.expired} "
        f"corrupt={c.corrupt} retries={c.retries} handed_back={c.handed_back} recovered={c.recovered}"
    )
    return code


def _start_forwarder(cfg: Any, layout: Any) -> Any:
    """Hybrid mode: the outbox forwarder on its own thread beside the daemon (see backends/nats/forwarder.py)."""
    from ..backends.nats.forwarder import Forwarder, ForwarderThread, nats_sink

    fw = Forwarder(layout, nats_sink(cfg.nats), max_event_bytes=cfg.max_event_bytes)
    return ForwarderThread(fw).start()
