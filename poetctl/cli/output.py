"""Output conventions (DESIGN.md §6): results on stdout, diagnostics on stderr.

A TTY gets tables; a pipe gets JSON lines. rich is imported only when a table
is actually drawn, so scripted use stays fast.

Everything meant for a human's terminal goes through here: tables, trees,
headings and the one-line diagnostics have their control characters escaped
(:mod:`poetctl.safetext`), and rich markup in values (``[bold]``,
``[link=...]``) is printed literally: cells are rich ``Text``, never markup.
JSON and JSON lines are left exact: a consumer parses them. They are orjson's
bytes, made by the standard library where that is provably the same
(:mod:`poetctl.stdjson`), so a short command does not pay for importing orjson.

``NO_COLOR`` (set and not empty, https://no-color.org) turns off every style,
bold and italic included, not only colours.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

from ..safetext import clean as clean
from ..safetext import clean_lines as clean_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMATS = ("table", "json", "jsonl")


def no_color() -> bool:
    """True when ``NO_COLOR`` asks for plain output (set and not empty)."""
    return bool(os.environ.get("NO_COLOR"))


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def resolve_format(requested: str | None, allowed: Sequence[str] = FORMATS, tty_default: str = "table") -> str:
    """The effective output format: the requested one, else ``tty_default`` on a TTY, else jsonl."""
    from ..errors import UsageError

    if requested is None:
        return tty_default if stdout_is_tty() else "jsonl"
    if requested not in allowed:
        raise UsageError(f"--output {requested!r} is not supported here; expected one of {', '.join(allowed)}")
    return requested


def write_line(text: str) -> None:
    """A line of text for a human (control characters escaped, newlines kept)."""
    sys.stdout.write(clean_lines(text) + "\n")


def write_raw_line(text: str) -> None:
    """A line exactly as given: only for output that is already escaped for its own format."""
    sys.stdout.write(text + "\n")


def write_jsonl(rows: Iterable[Any]) -> None:
    from ..stdjson import dumps

    out = sys.stdout.buffer
    for row in rows:
        out.write(dumps(row) + b"\n")
    out.flush()


def write_json(obj: Any) -> None:
    from ..stdjson import dumps

    sys.stdout.buffer.write(dumps(obj, indent=True) + b"\n")
    sys.stdout.flush()


def console(stderr: bool = False) -> Any:
    """A rich Console for human output: markup and emoji codes off, every ``str`` cleaned, NO_COLOR honoured.

    Styled text is passed as ``Text`` built with :func:`styled`; a plain
    ``str`` is printed literally (``[bold]`` stays ``[bold]``).
    """
    from rich.console import Console

    class SafeConsole(Console):
        def print(self, *objects: Any, **kwargs: Any) -> None:
            super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)

    return SafeConsole(
        stderr=stderr,
        markup=False,
        emoji=False,
        highlight=False,
        # color_system=None: no SGR codes at all (rich's own no_color keeps bold and italic).
        color_system=None if no_color() else "auto",
    )


def styled(*parts: str | tuple[Any, str]) -> Any:
    """A rich ``Text`` from parts: plain strings, or ``(value, style)`` pairs; every value is cleaned."""
    from rich.text import Text

    text = Text()
    for p in parts:
        if isinstance(p, tuple):
            text.append(clean(p[0]), style=p[1])
        else:
            text.append(clean(p))
    return text


def cell(value: Any) -> Any:
    """A table cell: the value as literal, cleaned text (None is empty)."""
    from rich.text import Text

    return Text("" if value is None else clean(value))


def write_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=None if title is None else cell(title), show_lines=False, header_style="bold")
    for c in columns:
        table.add_column(cell(c))
    for r in rows:
        table.add_row(*(cell(v) for v in r))
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
    """A diagnostic on stderr, prefixed with the program name (control characters escaped)."""
    sys.stderr.write(f"poetctl: error: {clean_lines(message)}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"poetctl: warning: {clean_lines(message)}\n")
    sys.stderr.flush()
