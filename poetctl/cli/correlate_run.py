"""``poetctl correlate`` itself, without typer (see :mod:`poetctl.cli.fastpath`)."""

from __future__ import annotations

import sys
from pathlib import Path

from .boundary import errors_to_exit, load

CORRELATE_FORMATS = ("tree", "json", "jsonl", "dot", "mermaid")


@errors_to_exit
def correlate(
    ident: str,
    output: str | None = None,
    expect: str | None = None,
    within: str | None = None,
    mode: str | None = None,
    spool: Path | None = None,
    config: Path | None = None,
) -> None:
    """``poetctl correlate`` after parsing (the typer command and the fast path both call this)."""
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
            raise SystemExit(1)
        sys.stderr.write(f"poetctl: {clean(verdict.explain())}\n")
