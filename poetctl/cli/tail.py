"""``poetctl tail [PATTERN...]``: the newest matching events, and ``-f`` to follow new ones.

Selection goes through :mod:`poetctl.query` (newest first, reading only the
files that can make the cut; processed/dead from the index when it exists).
Follow mode is driven by watchdog on ``events/pending`` (every commit is a
rename into it) plus a rescan about once a second as the safety net the
design asks for: the names watchdog reports are remembered, so an event the
daemon moved on before we read it is looked up by id wherever it went.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigOpt, ModeOpt, SpoolOpt
from .tail_run import STATE_CHOICES as STATE_CHOICES
from .tail_run import TAIL_FORMATS as TAIL_FORMATS
from .tail_run import TailArgs as TailArgs
from .tail_run import tail


def tail_cmd(
    patterns: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[PATTERN]...",
            help="Topic patterns, e.g. 'poet/functions/*' ('*' one segment, "
            "'**' any; a pattern matches the topics below it too).",
            show_default=False,
        ),
    ] = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="Show the last N matching events.")] = 10,
    since: Annotated[
        str | None, typer.Option("--since", help="Only events at/after: 15m, 2h, 3d or RFC 3339.", show_default=False)
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only events before: 15m, 2h, 3d or RFC 3339.", show_default=False)
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", metavar="GLOB", help="Event type glob, e.g. 'drift.*'; repeatable.", show_default=False),
    ] = None,
    correlation_id: Annotated[
        str | None, typer.Option("--correlation-id", help="Only this correlation id.", show_default=False)
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Only events from this source.", show_default=False)
    ] = None,
    state: Annotated[
        str,
        typer.Option(
            "--state",
            metavar="STATE",
            help="pending, inflight, processed, dead or all (all includes in-flight); comma-separated for several.",
        ),
    ] = "all",
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="table, json, jsonl or cloudevents (default: table on a TTY, jsonl in a pipe).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they are committed.")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            min=1,
            metavar="N",
            help="With -f: exit 0 once N events are printed (the first -n count).",
            show_default=False,
        ),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--idle-timeout",
            min=0.0,
            metavar="SECONDS",
            help="With -f: exit when nothing new for SECONDS (exit 1 "
            "if nothing was printed or --count was not reached).",
            show_default=False,
        ),
    ] = None,
    upcast: Annotated[
        bool,
        typer.Option(
            "--upcast",
            help="Show each event at its type's newest schema version, through the upcasters "
            "the handler modules register (poet.toml handlers, --handlers).",
        ),
    ] = False,
    handlers: Annotated[
        list[str] | None,
        typer.Option("--handlers", metavar="MODULE", help="With --upcast: a handler module to load; repeatable."),
    ] = None,
    mode: ModeOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the newest events matching the topic patterns and filters, oldest first.

    jsonl prints each envelope exactly as stored, so the output can be fed back
    with 'poetctl emit --batch -'. Damaged files are reported on stderr and
    skipped.

    Exit codes: 0 events printed; 1 nothing matched (with -f: --idle-timeout
    passed before anything was printed, or before --count was reached); 2
    bad pattern or option; 66 no spool; 74 I/O error; 77 permission denied;
    69 NATS unreachable (--mode nats).
    With -f, --count N exits 0 as soon as N events are printed.

    Examples:

    \b
      poetctl tail 'poet/functions/*' -n 20
      poetctl tail --type 'drift.*' --since 2h --output jsonl | poetctl emit --batch -
      poetctl tail -f --count 3 --idle-timeout 60 poet/system/alerts
    """
    if handlers and not upcast:
        raise typer.BadParameter("--handlers goes with --upcast", param_hint="'--handlers'")
    tail(
        patterns,
        lines,
        since,
        until,
        types,
        correlation_id,
        source,
        state,
        output,
        follow,
        count,
        idle_timeout,
        upcast,
        handlers,
        mode,
        spool,
        config,
    )
