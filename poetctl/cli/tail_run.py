"""``poetctl tail`` itself, without typer (options: :mod:`poetctl.cli.tail`; see :mod:`poetctl.cli.fastpath`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import NoMatch, UsageError
from .boundary import errors_to_exit, load

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TAIL_FORMATS = ("table", "json", "jsonl", "cloudevents")
STATE_CHOICES = ("pending", "inflight", "processed", "dead", "all")
TABLE_COLUMNS = ("time", "type", "topic", "id", "correlation", "state")


def tail(
    patterns: list[str] | None = None,
    lines: int = 10,
    since: str | None = None,
    until: str | None = None,
    types: list[str] | None = None,
    correlation_id: str | None = None,
    source: str | None = None,
    state: str = "all",
    output: str | None = None,
    follow: bool = False,
    count: int | None = None,
    idle_timeout: float | None = None,
    upcast: bool = False,
    handlers: list[str] | None = None,
    mode: str | None = None,
    spool: Path | None = None,
    config: Path | None = None,
) -> None:
    """``poetctl tail`` after parsing (the typer command and the fast path both call this)."""
    args = TailArgs(
        patterns or [],
        lines,
        since,
        until,
        types or [],
        correlation_id,
        source,
        state,
        output,
        follow,
        count,
        idle_timeout,
    )
    args.upcast = (handlers or []) if upcast else None
    args.mode = mode
    _tail(args, spool, config)


class TailArgs:
    """The parsed command line (plain attributes; kept apart from typer for reuse in tests)."""

    def __init__(
        self,
        patterns: Sequence[str],
        lines: int,
        since: str | None,
        until: str | None,
        types: Sequence[str],
        correlation_id: str | None,
        source: str | None,
        state: str,
        output: str | None,
        follow: bool,
        count: int | None,
        idle_timeout: float | None,
    ) -> None:
        self.patterns = list(patterns)
        self.lines = lines
        self.since = since
        self.until = until
        self.types = list(types)
        self.correlation_id = correlation_id
        self.source = source
        self.state = state
        self.output = output
        self.follow = follow
        self.count = count
        self.idle_timeout = idle_timeout
        self.upcast: list[str] | None = None  # handler modules to take upcasters from (--upcast)
        self.mode: str | None = None  # --mode (nats: read the JetStream stream)


def parse_states(text: str) -> tuple[str, ...]:
    """``--state`` value -> the states to read, in flow order. UsageError if unknown."""
    from ..query import ALL_STATES

    wanted = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATE_CHOICES]
    if not wanted or bad:
        raise UsageError(f"--state {text!r}: expected one of {', '.join(STATE_CHOICES)}")
    if "all" in wanted:
        return ALL_STATES
    return tuple(s for s in ALL_STATES if s in wanted)


def describe(args: TailArgs, states: Sequence[str]) -> str:
    parts = [f"pattern {' '.join(args.patterns)!r}"] if args.patterns else []
    parts += [f"--type {t!r}" for t in args.types]
    for opt, val in (
        ("--correlation-id", args.correlation_id),
        ("--source", args.source),
        ("--since", args.since),
        ("--until", args.until),
    ):
        if val is not None:
            parts.append(f"{opt} {val!r}")
    if args.state != "all":
        parts.append(f"--state {args.state}")
    return ", ".join(parts) if parts else "(no filter)"


class Printer:
    """Writes events in one format; flushes after each so pipes see them at once."""

    def __init__(self, fmt: str, follow: bool) -> None:
        self.fmt = fmt
        self.follow = follow
        self.header_done = False
        self.out = sys.stdout.buffer
        self.transform: Any = None  # Found -> Found, e.g. upcasting (--upcast)

    def batch(self, found: list[Any]) -> None:
        """Print events (already in the order wanted)."""
        if not found:
            return
        if self.transform is not None:
            found = [self.transform(f) for f in found]
        if self.fmt == "json":
            from .output import write_json

            write_json([f.event.to_dict() for f in found])
            return
        if self.fmt == "table" and not self.follow:
            self.table([self._cells(f) for f in found])
            return
        for f in found:
            self.one(f)
        self.out.flush()

    def one(self, f: Any) -> None:
        if self.fmt == "jsonl":
            self.out.write(as_stored(f) + b"\n")
        elif self.fmt == "cloudevents":
            from ..cloudevents import to_cloudevent
            from ..stdjson import dumps

            self.out.write(dumps(to_cloudevent(f.event.to_dict())) + b"\n")
        else:
            # Streaming table: fixed columns, one line per event (a rich table cannot grow).
            widths = (24, 32, 40, 36, 24, 9)
            if not self.header_done:
                self.header_done = True
                self.out.write(_row(TABLE_COLUMNS, widths).encode() + b"\n")
            self.out.write(_row(self._cells(f), widths).encode() + b"\n")

    def table(self, rows: list[tuple[str, ...]]) -> None:
        """A rich table on a TTY (ids and times never truncated), aligned plain columns elsewhere."""
        from .output import cell, console, stdout_is_tty

        if stdout_is_tty():
            from rich.table import Table

            t = Table(header_style="bold")
            for c in TABLE_COLUMNS:
                t.add_column(c, no_wrap=c in ("time", "id", "state"), overflow="fold")
            for r in rows:
                t.add_row(*(cell(v) for v in r))
            console().print(t)
            return
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(TABLE_COLUMNS)]
        self.out.write("".join(_row(r, widths) + "\n" for r in [TABLE_COLUMNS, *rows]).encode())
        self.out.flush()

    @staticmethod
    def _cells(f: Any) -> tuple[str, ...]:
        """The table row of an event, every value escaped for a terminal (see :mod:`poetctl.safetext`)."""
        from ..safetext import clean
        from ..timeparse import iso

        e = f.event
        return tuple(clean(v) for v in (iso(e.timestamp), e.type, e.topic, e.id, e.correlation_id or "-", f.state))


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def as_stored(f: Any) -> bytes:
    """The envelope as stored: the file's own JSON on one line (re-encoded only if it spans lines)."""
    from ..stdjson import dumps, loads

    raw: bytes = f.raw.strip()
    if not raw or b"\n" in raw or b"\r" in raw:
        return dumps(loads(raw) if raw else f.event.to_dict())
    return raw


@errors_to_exit
def _tail(args: TailArgs, spool: Path | None, config: Path | None) -> None:
    from ..backends.fs.layout import SpoolLayout
    from ..query import SMALL_SPOOL, newest, open_index
    from ..selection import Query
    from ..timeparse import parse_time
    from ..topics import validate_pattern
    from .mode import resolve_mode
    from .output import resolve_format, warn

    fmt = resolve_format(args.output, TAIL_FORMATS)
    patterns = [validate_pattern(p) for p in args.patterns]
    states = parse_states(args.state)
    if not args.follow and (args.count is not None or args.idle_timeout is not None):
        raise UsageError("--count and --idle-timeout go with --follow/-f")
    if args.follow and fmt == "json":
        raise UsageError("--output json cannot stream; use jsonl (or cloudevents, table) with --follow")
    now = time.time()
    sel = Query(
        topics=patterns,
        types=args.types,
        correlation_id=args.correlation_id,
        source=args.source,
        since=parse_time(args.since, option="--since", now=now) if args.since is not None else None,
        until=parse_time(args.until, option="--until", now=now) if args.until is not None else None,
    )
    cfg = load(spool, config)
    if resolve_mode(args.mode, cfg) == "nats":
        from .tail_nats import tail_nats

        printer = Printer(fmt, args.follow)
        if args.upcast is not None:
            from .upcast import upcaster_for

            printer.transform = upcaster_for(cfg, args.upcast)
        code = tail_nats(cfg, args, sel, states, printer)
        if code:
            raise SystemExit(code)
        return
    layout = SpoolLayout(cfg.spool)
    layout.require_real(*layout.read_dirs(), missing_ok=True)
    damaged: set[str] = set()

    def on_damaged(path: Path, reason: str) -> None:
        if str(path) not in damaged:
            damaged.add(str(path))
            warn(f"skipped damaged file {path}: {reason}")

    printer = Printer(fmt, args.follow)
    if args.upcast is not None:
        from .upcast import upcaster_for

        printer.transform = upcaster_for(cfg, args.upcast)
    if not args.follow:
        index = open_index(layout, SMALL_SPOOL)
        try:
            found = newest(layout, sel, states, args.lines, on_damaged, index) if args.lines else []
        finally:
            if index is not None:
                index.close()
        if not found:
            raise NoMatch(_nothing(args, states, layout))
        printer.batch(list(reversed(found)))
        return
    from .tail_follow import Follower

    code = Follower(layout, sel, states, printer, on_damaged, args).run()
    if code:
        raise SystemExit(code)


def _nothing(args: TailArgs, states: Sequence[str], layout: Any) -> str:
    if args.lines == 0:
        return "no events requested (-n 0)"
    return f"no events match {describe(args, states)} in {layout.root}"
