"""``poetctl daemon``: process the spool."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Process events: claim, run handlers, retry, dead-letter, recover.

    Handler modules come from --handlers and poet.toml's `handlers`. The first
    SIGINT/SIGTERM finishes or hands back in-flight events and exits 0; a
    second exits at once (130). Nothing is lost either way.

    With --once, exit codes are: 0 all due events processed; 1 some were
    dead-lettered, expired or quarantined; 75 some wait for a retry (run again
    later).
    """
    code = _daemon(handlers or [], workers, once, rescan, no_builtin, spool, config)
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
) -> int:
    from ..daemon.core import Daemon, DaemonOptions, install_signal_handlers
    from ..daemon.loader import load_handlers
    from ..router import EventRouter

    cfg = load(spool, config)
    opts = DaemonOptions.from_config(dict(cfg.daemon), workers=workers, once=once or None, rescan_interval=rescan)
    router = EventRouter(config=cfg)
    if not no_builtin:
        from ..handlers import register_builtin

        register_builtin(router)
    load_handlers(router, [*cfg.handlers, *handlers])
    d = Daemon(router, opts)
    install_signal_handlers(d)
    sys.stderr.write(
        f"poetctl: daemon {d.owner} on {router.layout.root} with {opts.workers} worker(s), "
        f"{len(router.subscriptions)} handler(s){' (once)' if opts.once else ''}\n"
    )
    sys.stderr.flush()
    code = d.run()
    c = d.counters
    sys.stderr.write(
        f"poetctl: daemon stopped: processed={c.processed} dead={c.dead} expired={c.expired} "
        f"corrupt={c.corrupt} retries={c.retries} handed_back={c.handed_back} recovered={c.recovered}\n"
    )
    return code
