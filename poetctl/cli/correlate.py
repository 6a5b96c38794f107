"""``poetctl correlate ID``: every event connected to an event or a correlation id, as a tree."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigOpt, ModeOpt, SpoolOpt
from .correlate_run import CORRELATE_FORMATS as CORRELATE_FORMATS
from .correlate_run import correlate


def correlate_cmd(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A correlation id or an event id.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="tree, json, jsonl, dot (Graphviz) or mermaid (default: tree on a TTY, jsonl in a pipe).",
            show_default=False,
        ),
    ] = None,
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            metavar="STEPS",
            help="Assert a causation chain of type globs, e.g. "
            "'drift.detected>alert.*>feedback.*'; exit 1 if incomplete.",
            show_default=False,
        ),
    ] = None,
    within: Annotated[
        str | None,
        typer.Option(
            "--within",
            metavar="DURATION",
            help="With --expect: first to last step within e.g. 30s, 15m, 2h.",
            show_default=False,
        ),
    ] = None,
    mode: ModeOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show every event connected to ID: its correlation group and causation links both ways.

    The tree shows each event's type, id, state, time and the hop from its
    cause; a cause missing from the spool is flagged. json and jsonl give one
    node per event, depth first, each naming its parent, depth and children.
    Exit codes: 1 unknown ID or --expect chain incomplete, 2 usage, 66 no
    spool, 69 NATS unreachable (--mode nats), 74 I/O error, 77 permission denied.

    Examples:

    \b
      poetctl correlate drift-alert-123
      poetctl correlate drift-alert-123 --expect 'drift.detected>alert.*>feedback.*' --within 2h
      poetctl correlate drift-alert-123 --output dot | dot -Tsvg > chain.svg
    """
    correlate(ident, output, expect, within, mode, spool, config)
