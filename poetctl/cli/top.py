"""``poetctl top``: a live view of rates, lag, handler latency, errors, dead letters and daemons."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load


def top_cmd(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit (for scripts: -o json).")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, max=3600.0, help="Seconds between refreshes.")
    ] = 1.0,
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Live view: handle and emit rates, lag, per-handler latency percentiles and errors,
    the newest dead letters, and the daemons with their heartbeats.

    Refreshes every second; q or Ctrl-C quits. Rates and percentiles come
    from the stats files running daemons keep in the spool (run/stats).

    With --once (or when stdout is not a terminal) it prints one snapshot:
    a table, or with -o json one JSON document. Exit 66 no spool.

    Examples:

      poetctl top

      poetctl top --once -o json | jq .rates
    """
    _top(once, interval, output, spool, config)


@errors_to_exit
def _top(once: bool, interval: float, output: str | None, spool: Path | None, config: Path | None) -> None:
    from ..backends.fs.layout import SpoolLayout
    from ..observability import top
    from .output import resolve_format, write_json, write_jsonl

    cfg = load(spool, config)
    root = SpoolLayout(cfg.spool).require().root
    lease = float(cfg.daemon.get("lease_seconds", 30.0))
    interactive = not once and output is None and sys.stdin.isatty() and sys.stdout.isatty()
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
