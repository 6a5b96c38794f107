"""Output conventions (DESIGN.md §6): results on stdout, diagnostics on stderr.

A TTY gets tables; a pipe gets JSON lines. ``NO_COLOR`` is honoured. rich is
imported only when a table is actually drawn, so scripted use stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

FORMATS = ("table", "json", "jsonl")


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def resolve_format(requested: str | None, allowed: Sequence[str] = FORMATS, tty_default: str = "table") -> str:
    """The effective output format: the requested one, else table on a TTY, else jsonl."""
    from ..errors import UsageError

    if requested is None:
        return tty_default if stdout_is_tty() else "jsonl"
    if requested not in allowed:
        raise UsageError(f"--output {requested!r} is not supported here; expected one of {', '.join(allowed)}")
    return requested


def write_line(text: str) -> None:
    sys.stdout.write(text + "\n")


def write_jsonl(rows: Iterable[Any]) -> None:
    out = sys.stdout.buffer
    for row in rows:
        out.write(orjson.dumps(row) + b"\n")
    out.flush()


def write_json(obj: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def console(stderr: bool = False) -> Any:
    """A rich Console that respects NO_COLOR and the stream's TTY-ness."""
    from rich.console import Console

    return Console(stderr=stderr, no_color="NO_COLOR" in os.environ, highlight=False)


def write_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console().print(table)


def emit_rows(fmt: str, columns: Sequence[str], rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Print ``rows`` (dicts keyed by ``columns``) in format ``fmt``."""
    if fmt == "table":
        write_table(columns, ([r.get(c) for c in columns] for r in rows), title)
    elif fmt == "json":
        write_json(rows)
    else:
        write_jsonl(rows)


def error(message: str) -> None:
    """A diagnostic on stderr, prefixed with the program name."""
    sys.stderr.write(f"poetctl: error: {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"poetctl: warning: {message}\n")
    sys.stderr.flush()
