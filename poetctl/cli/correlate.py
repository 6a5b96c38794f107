"""``poetctl correlate ID``: every event connected to an event or a correlation id, as a tree."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, ModeOpt, SpoolOpt, errors_to_exit, load

CORRELATE_FORMATS = ("tree", "json", "jsonl", "dot", "mermaid")


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
    _correlate(ident, output, expect, within, spool, config, mode)


@errors_to_exit
def _correlate(
    ident: str,
    output: str | None,
    expect: str | None,
    within: str | None,
    spool: Path | None,
    config: Path | None,
    mode: str | None = None,
) -> None:
    from ..backends.fs.layout import SpoolLayout
    from ..chain import check_chain, connected, parse_duration, parse_steps, render_tree, to_dot, to_json, to_mermaid
    from ..errors import NoMatch, UsageError
    from .mode import resolve_mode
    from .output import clean, error, resolve_format, warn, write_json, write_jsonl, write_line

    fmt = resolve_format(output, CORRELATE_FORMATS, tty_default="tree")
    steps = parse_steps(expect) if expect is not None else None
    if within is not None and steps is None:
        raise UsageError("--within goes with --expect")
    limit = parse_duration(within) if within is not None else None
    cfg = load(spool, config)
    if resolve_mode(mode, cfg) == "nats":
        from .views_nats import connected_nats

        roots, where = connected_nats(cfg, ident)
    else:
        layout = SpoolLayout(cfg.spool)
        layout.require_real(*layout.read_dirs(), missing_ok=True)

        def on_damaged(path: Path, reason: str) -> None:
            warn(f"skipped damaged file {path}: {reason}")

        roots, where = connected(layout, ident, on_damaged=on_damaged), str(layout.root)
    if not roots:
        raise NoMatch(f"no event or correlation id {ident} in {where}")
    if fmt == "json":
        write_json(to_json(roots))
    elif fmt == "jsonl":
        write_jsonl(to_json(roots))
    elif fmt == "dot":
        write_line(to_dot(roots, title=ident))
    elif fmt == "mermaid":
        write_line(to_mermaid(roots))
    else:
        write_line(render_tree(roots))
    sys.stdout.flush()
    if steps is not None:
        verdict = check_chain(roots, steps, limit)
        if not verdict.complete:
            error(verdict.explain())
            raise typer.Exit(1)
        sys.stderr.write(f"poetctl: {clean(verdict.explain())}\n")
