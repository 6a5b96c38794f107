"""``poetctl top``: a live view of rates, lag, handler latency, errors, dead letters and daemons."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, ModeOpt, OutputOpt, SpoolOpt, errors_to_exit, load


def top_cmd(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit (for scripts: -o json).")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, max=3600.0, help="Seconds between refreshes.")
    ] = 1.0,
    output: OutputOpt = None,
    mode: ModeOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Live view: handle and emit rates, lag, per-handler latency percentiles and errors,
    the newest dead letters, and the daemons with their heartbeats.

    Refreshes every second; q or Ctrl-C quits. Rates and percentiles come
    from the stats files running daemons keep in the spool (run/stats).

    With --once (or when stdout is not a terminal) it prints one snapshot:
    a table, or with -o json one JSON document. Exit 66 no spool.

    --mode nats (or POET_MODE / delivery_mode nats) reads NATS instead: the
    daemons and their stats from the lease bucket, lag per partition, the
    newest dead letters of the DLQ stream (exit 69: NATS unreachable).

    Examples:

      poetctl top

      poetctl top --once -o json | jq .rates
    """
    _top(once, interval, output, spool, config, mode)


@errors_to_exit
def _top(
    once: bool, interval: float, output: str | None, spool: Path | None, config: Path | None, mode: str | None = None
) -> None:
    from ..observability import top
    from .mode import resolve_mode
    from .output import resolve_format, write_json, write_jsonl

    cfg = load(spool, config)
    interactive = not once and output is None and sys.stdin.isatty() and sys.stdout.isatty()
    if resolve_mode(mode, cfg) == "nats":
        from ..observability.top_nats import snapshot_nats
        from .mode import nats_transport

        t = nats_transport(cfg)
        try:
            if interactive:
                top.live_view(lambda prev: snapshot_nats(t, prev=prev), interval)
                return
            snap = snapshot_nats(t)
        finally:
            t.close()
    else:
        from ..backends.fs.layout import SpoolLayout

        root = SpoolLayout(cfg.spool).require().root
        lease = float(cfg.daemon.get("lease_seconds", 30.0))
        if interactive:
            top.live(root, lease, interval)
            return
        snap = top.snapshot(root, lease)
    fmt = resolve_format(output)
    if fmt == "json":
        write_json(snap)
    elif fmt == "jsonl":
        write_jsonl([snap])
    else:
        from rich.console import Console

        Console().print(top.render(snap))
