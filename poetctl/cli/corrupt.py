"""``poetctl corrupt list|show|requeue``: the quarantine (events/corrupt)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidData, NoMatch, UsageError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

corrupt_app = typer.Typer(
    name="corrupt",
    no_args_is_help=True,
    help="Inspect the quarantine (events/corrupt) and put fixed files back: list, show, requeue.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

SHOW_LIMIT = 1024 * 1024  # bytes of content `show` prints (--raw prints everything)
DETAIL_WIDTH = 80


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal: control and other non-printable characters become escapes (``\\x1b``).

    Newlines and tabs are kept with ``keep_newlines`` (file content), else escaped too (table cells).
    """
    out = []
    for ch in text:
        if ch.isprintable() or (keep_newlines and ch in "\n\t"):
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def _short(text: str | None, n: int = DETAIL_WIDTH) -> str:
    if not text:
        return ""
    t = printable(text)
    return t if len(t) <= n else t[: n - 1] + "…"


def _iso(ts: Any) -> str:
    from ..timeparse import iso

    if not isinstance(ts, int | float):
        return ""
    try:
        return iso(float(ts))
    except (OverflowError, ValueError, OSError):
        return str(ts)  # an absurd time in a hand-edited .reason must not stop the listing


def _table(columns: list[str], rows: list[list[str]], title: str) -> None:
    # Cells as rich Text, never markup: file names and details come from hostile input.
    from rich.table import Table
    from rich.text import Text

    from .output import console

    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(Text(printable(v)) for v in r))
    console().print(table)


def _layout(spool: Path | None, config: Path | None) -> tuple[Any, Any]:
    from ..backends.fs.layout import SpoolLayout

    cfg = load(spool, config)
    return cfg, SpoolLayout(cfg.spool).require()


def _check_name(name: str) -> None:
    """NAME is one entry of corrupt/: never a path, never a hidden tmp file."""
    if not name or "/" in name or "\0" in name or name in (".", "..") or name.startswith("."):
        raise UsageError(f"{printable(name)!r} is not a file name in events/corrupt (see 'poetctl corrupt list')")


@corrupt_app.command("list")
def list_cmd(output: OutputOpt = None, spool: SpoolOpt = None, config: ConfigOpt = None) -> None:
    """List quarantined files with their reason code, detail and time (oldest first).

    A table on a TTY, JSON lines in a pipe (name, reason, detail, at, from,
    original_name, kind, size, reason_file, reason_error). A file without a
    readable .reason is listed with an empty reason. Exit 0, also when empty.
    """
    _list(output, spool, config)


@errors_to_exit
def _list(output: str | None, spool: Path | None, config: Path | None) -> None:
    from ..backends.fs.corrupt import entries
    from .output import resolve_format, write_json, write_jsonl

    fmt = resolve_format(output)
    _, layout = _layout(spool, config)
    items = entries(layout)
    if fmt == "table":
        rows = [
            [q.name, q.reason or ("?" if q.reason_error else "-"), _short(q.detail or q.reason_error), _iso(q.at)]
            for q in items
        ]
        _table(["name", "reason", "detail", "quarantined"], rows, f"{len(items)} quarantined file(s)")
    elif fmt == "json":
        write_json([q.row() for q in items])
    else:
        write_jsonl(q.row() for q in items)


@corrupt_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A name from 'poetctl corrupt list'.")],
    raw: Annotated[bool, typer.Option("--raw", help="Write the file's exact bytes to stdout, nothing else.")] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="text, json or jsonl (default: text on a TTY, jsonl in a pipe).", show_default=False
        ),
    ] = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print why NAME was quarantined and its content.

    Text output escapes control characters, so a hostile file cannot drive
    the terminal; JSON output carries the content as a string (undecodable
    bytes as \\xNN). --raw writes the exact bytes. Content beyond 1 MiB is cut
    (and says so) except with --raw. Links and other non-regular entries are
    described, never followed. Exit 1 if there is no such quarantined file.
    """
    _show(name, raw, output, spool, config)


@errors_to_exit
def _show(name: str, raw: bool, output: str | None, spool: Path | None, config: Path | None) -> None:
    from ..backends.fs.corrupt import find, open_regular, read_head
    from ..backends.fs.reader import CorruptEvent
    from .output import resolve_format, write_json, write_jsonl

    _check_name(name)
    fmt = "raw" if raw else resolve_format(output, ("text", "json", "jsonl"), tty_default="text")
    _, layout = _layout(spool, config)
    q = find(layout, name)
    if q is None:
        raise NoMatch(f"no quarantined file {printable(name)!r} in {layout.corrupt}")
    if raw:
        try:
            fd = open_regular(layout, name)
        except FileNotFoundError:
            raise NoMatch(f"{printable(name)!r} went away") from None
        except CorruptEvent as exc:
            raise InvalidData(f"{exc.detail}; nothing to print", where=f"events/corrupt/{printable(name)}") from None
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read(1 << 16):
                sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    content: bytes | None = None
    size = q.size
    if q.kind == "file":
        try:
            content, size = read_head(layout, name, SHOW_LIMIT)
        except (FileNotFoundError, CorruptEvent):
            content = None
    doc = {**q.row(), "size": size, "content": None if content is None else content.decode("utf-8", "backslashreplace")}
    doc["truncated"] = content is not None and size is not None and len(content) < size
    if fmt == "json":
        write_json(doc)
    elif fmt == "jsonl":
        write_jsonl([doc])
    else:
        _show_text(doc)


def _show_text(doc: dict[str, Any]) -> None:
    lines = [f"name:        {printable(doc['name'])}"]
    if doc["original_name"] and doc["original_name"] != doc["name"]:
        lines.append(f"original:    {printable(doc['original_name'])}")
    lines.append(f"reason:      {printable(doc['reason'] or '-')}")
    if doc["detail"]:
        lines.append(f"detail:      {printable(doc['detail'])}")
    if doc["reason_error"]:
        lines.append(f"reason file: unreadable ({printable(doc['reason_error'])})")
    elif not doc["reason_file"]:
        lines.append("reason file: none")
    if doc["at"] is not None:
        lines.append(f"quarantined: {_iso(doc['at'])}" + (f" from {printable(doc['from'])}" if doc["from"] else ""))
    lines.append(f"kind:        {doc['kind']}" + (f", {doc['size']} bytes" if doc["size"] is not None else ""))
    sys.stdout.write("\n".join(lines) + "\n")
    if doc["content"] is not None:
        text = printable(doc["content"], keep_newlines=True)
        sys.stdout.write("\n" + text + ("" if text.endswith("\n") else "\n"))
        if doc["truncated"]:
            sys.stdout.write(f"... cut at {SHOW_LIMIT} bytes; 'poetctl corrupt show --raw' prints all of it\n")
    sys.stdout.flush()


@corrupt_app.command("requeue")
def requeue_cmd(
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME...", help="Names from 'poetctl corrupt list'.", show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Requeue every quarantined file that is valid now.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and report only; change nothing.")] = False,
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Put fixed quarantined files back through the daemon's checks and, if valid, into pending/.

    Each file is checked as the daemon checks it (regular file, size, JSON,
    checksum, envelope, payload schema). A valid one moves to
    events/pending/<id>.json, never replacing anything, and its .reason is
    removed. One that is still invalid stays, its .reason updated with the new
    reason (printed). A valid file whose id is already in the spool (pending,
    in flight, processed, dead) stays: it would run twice.

    Prints one result per file (name, status, id, reason, detail). Exit 0 all
    requeued; 65 something is still invalid or its id exists; 1 a NAME is not
    in the quarantine; 2 neither NAME nor --all (or both).

    Example: poetctl corrupt requeue --all --dry-run
    """
    _requeue(names or [], all_, dry_run, output, spool, config)


@errors_to_exit
def _requeue(
    names: list[str], all_: bool, dry_run: bool, output: str | None, spool: Path | None, config: Path | None
) -> None:
    from ..backends.fs.corrupt import requeue
    from ..schemas import SchemaRegistry
    from .output import error, resolve_format, warn, write_json, write_jsonl

    if bool(names) == all_:
        raise UsageError("give NAME... or --all (not both)")
    for n in names:
        _check_name(n)
    fmt = resolve_format(output)
    cfg, layout = _layout(spool, config)
    outcomes = requeue(
        layout,
        None if all_ else list(dict.fromkeys(names)),
        SchemaRegistry(cfg.schema_paths),
        cfg.max_event_bytes,
        validate_payload=cfg.validation,
        dry_run=dry_run,
        warn=warn,
    )
    rows = [o.row() for o in outcomes]
    if fmt == "table":
        _table(
            ["name", "status", "id", "reason", "detail"],
            [[o.name, o.status, o.id or "", o.reason or "", _short(o.detail)] for o in outcomes],
            f"{sum(o.status in ('requeued', 'would_requeue') for o in outcomes)} of {len(outcomes)} "
            + ("would be requeued" if dry_run else "requeued"),
        )
    elif fmt == "json":
        write_json(rows)
    else:
        write_jsonl(rows)
    for o in outcomes:
        if o.status == "invalid":
            error(f"events/corrupt/{printable(o.name)}: still invalid: {o.reason}: {printable(o.detail or '')}")
        elif o.status in ("exists", "missing"):
            error(f"events/corrupt/{printable(o.name)}: not requeued: {printable(o.detail or '')}")
    if any(o.status in ("invalid", "exists") for o in outcomes):
        raise typer.Exit(65)
    if any(o.status == "missing" for o in outcomes):
        raise typer.Exit(1)
