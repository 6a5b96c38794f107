"""``poetctl tail [PATTERN...]``: the newest matching events, and ``-f`` to follow new ones.

Selection goes through :mod:`poetctl.query` (newest first, reading only the
files that can make the cut; processed/dead from the index when it exists).
Follow mode is driven by watchdog on ``events/pending`` (every commit is a
rename into it) plus a rescan about once a second as the safety net the
design asks for: the names watchdog reports are remembered, so an event the
daemon moved on before we read it is looked up by id wherever it went.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import NoMatch, UsageError
from .common import ConfigOpt, SpoolOpt, errors_to_exit, load

TAIL_FORMATS = ("table", "json", "jsonl", "cloudevents")
STATE_CHOICES = ("pending", "inflight", "processed", "dead", "all")
FLOW = {"pending": 0, "inflight": 1, "processed": 2, "dead": 2}
RESCAN_SECONDS = 1.0
# How far back (event time) the index safety net looks for events that came and went
# between two rescans without a watchdog notice (inotify overflow).
NET_LOOKBACK = 30.0
TABLE_COLUMNS = ("time", "type", "topic", "id", "correlation", "state")


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
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the newest events matching the topic patterns and filters, oldest first.

    jsonl prints each envelope exactly as stored, so the output can be fed back
    with 'poetctl emit --batch -'. Damaged files are reported on stderr and
    skipped.

    Exit codes: 0 events printed; 1 nothing matched (with -f: --idle-timeout
    passed before anything was printed, or before --count was reached); 2
    bad pattern or option; 66 no spool; 74 I/O error; 77 permission denied.
    With -f, --count N exits 0 as soon as N events are printed.

    Examples:

    \b
      poetctl tail 'poet/functions/*' -n 20
      poetctl tail --type 'drift.*' --since 2h --output jsonl | poetctl emit --batch -
      poetctl tail -f --count 3 --idle-timeout 60 poet/system/alerts
    """
    if handlers and not upcast:
        raise typer.BadParameter("--handlers goes with --upcast", param_hint="'--handlers'")
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
        import orjson

        if self.fmt == "jsonl":
            self.out.write(as_stored(f) + b"\n")
        elif self.fmt == "cloudevents":
            from ..cloudevents import to_cloudevent

            self.out.write(orjson.dumps(to_cloudevent(f.event.to_dict())) + b"\n")
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
    import orjson

    raw: bytes = f.raw.strip()
    if not raw or b"\n" in raw or b"\r" in raw:
        return orjson.dumps(orjson.loads(raw) if raw else f.event.to_dict())
    return raw


@errors_to_exit
def _tail(args: TailArgs, spool: Path | None, config: Path | None) -> None:
    from ..backends.fs.layout import SpoolLayout
    from ..query import SMALL_SPOOL, Selector, newest, open_index
    from ..timeparse import parse_time
    from ..topics import validate_pattern
    from .output import resolve_format, warn

    fmt = resolve_format(args.output, TAIL_FORMATS)
    patterns = [validate_pattern(p) for p in args.patterns]
    states = parse_states(args.state)
    if not args.follow and (args.count is not None or args.idle_timeout is not None):
        raise UsageError("--count and --idle-timeout go with --follow/-f")
    if args.follow and fmt == "json":
        raise UsageError("--output json cannot stream; use jsonl (or cloudevents, table) with --follow")
    now = time.time()
    sel = Selector(
        patterns=patterns,
        types=args.types,
        correlation_id=args.correlation_id,
        source=args.source,
        since=parse_time(args.since, option="--since", now=now) if args.since is not None else None,
        until=parse_time(args.until, option="--until", now=now) if args.until is not None else None,
    )
    layout = SpoolLayout(load(spool, config).spool)
    layout.require_real(*layout.read_dirs(), missing_ok=True)
    damaged: set[str] = set()

    def on_damaged(path: Path, reason: str) -> None:
        if str(path) not in damaged:
            damaged.add(str(path))
            warn(f"skipped damaged file {path}: {reason}")

    printer = Printer(fmt, args.follow)
    if args.upcast is not None:
        from .upcast import upcaster_for

        printer.transform = upcaster_for(load(spool, config), args.upcast)
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
    code = Follower(layout, sel, states, printer, on_damaged, args).run()
    if code:
        raise typer.Exit(code)


def _nothing(args: TailArgs, states: Sequence[str], layout: Any) -> str:
    if args.lines == 0:
        return "no events requested (-n 0)"
    return f"no events match {describe(args, states)} in {layout.root}"


class Follower:
    """``tail -f``: print the last N, then every new matching event once, as it is committed.

    New means: not in a wanted state when we started, in one now (usually:
    committed to ``pending`` after we started; with ``--state processed``,
    processed after we started). Candidates come from (1) the names watchdog
    reports arriving in pending, (2) a rescan of pending and in-flight every
    :data:`RESCAN_SECONDS`, and (3) recent index rows (events that came and
    went between rescans unnoticed, e.g. after an inotify overflow). An event
    not yet in a wanted state waits and is looked up by id once it leaves
    pending/in-flight. Each id is printed at most once.
    """

    def __init__(
        self,
        layout: Any,
        sel: Any,
        states: Sequence[str],
        printer: Printer,
        on_damaged: Callable[[Path, str], None],
        args: TailArgs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = layout
        self.sel = sel
        self.states = tuple(states)
        self.printer = printer
        self.on_damaged = on_damaged
        self.args = args
        self.clock = clock
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._arrived: list[str] = []
        self.done: set[str] = set()  # printed, rejected or present at start: never look again
        self.printed = 0
        self.waiting: dict[str, str] = {}  # id -> state it was last seen in
        self.index: Any = None
        self.started = time.time()

    # watchdog thread
    def _arrival(self, path: str) -> None:
        name = os.path.basename(path)
        if name.endswith(".json") and not name.startswith("."):
            with self._lock:
                self._arrived.append(name[:-5])
            self.wake.set()

    def run(self) -> int:
        from ..query import SMALL_SPOOL, has_rows, newest, open_index

        # What is in pending/in flight now is not new: already shown (when in a wanted state), or
        # waiting to reach one (e.g. --state processed). Listed before the watch starts, so
        # anything committed from here on is either reported by watchdog or absent from this list.
        top = max(FLOW[s] for s in self.states)
        for eid, path in self._live():
            state = _state_of(self.layout, path)
            if state not in self.states and FLOW[state] < top:
                self.waiting[eid] = state
            else:
                self.done.add(eid)
        net_start = self.started - 2.0
        self.index = open_index(self.layout)
        if self.index is not None:
            # Old news too: whatever the index already has from around our start.
            self.done.update(str(r[0]) for r in self.index.newest(["processed", "dead"], since=net_start))
        observer = self._watch()
        try:
            idx = self.index if self.index is not None and has_rows(self.index, SMALL_SPOOL) else None
            initial = (
                newest(self.layout, self.sel, self.states, self.args.lines, self.on_damaged, idx)
                if self.args.lines
                else []
            )
            if self.args.count is not None:
                initial = initial[: self.args.count]  # newest first here: keep the newest
            initial.reverse()
            self.done.update(f.id for f in initial)
            self.printer.batch(initial)
            self.printed += len(initial)
            if self.args.count is not None and self.printed >= self.args.count:
                return 0
            return self._loop(net_start)
        finally:
            if observer is not None:
                observer.stop()
            if self.index is not None:
                self.index.close()

    def _watch(self) -> Any:
        from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEventHandler

        from ..backends.fs import watcher

        follower = self

        class _Arrivals(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                dest = getattr(event, "dest_path", "") or event.src_path
                follower._arrival(dest if isinstance(dest, str) else dest.decode())

        # Same observer the daemon uses (arrivals only: IN_CREATE, IN_MOVED_TO), with names kept.
        obs: Any
        try:
            obs = watcher._arrivals_observer()
        except Exception:
            from watchdog.observers import Observer

            obs = Observer()
        try:
            obs.schedule(
                _Arrivals(), str(self.layout.pending), recursive=False, event_filter=[FileCreatedEvent, FileMovedEvent]
            )
            obs.daemon = True
            obs.start()
        except Exception as exc:  # e.g. the inotify watch limit: the rescans still work
            from .output import warn

            warn(f"file watching unavailable ({exc}); relying on rescans every {RESCAN_SECONDS:g}s")
            return None
        return obs

    def _live(self) -> list[tuple[str, Path]]:
        """(id, path) of every event file in pending and in flight."""
        out = []
        for d in (self.layout.pending, *self.layout.inflight_dirs()):
            try:
                with os.scandir(d) as it:
                    out += [
                        (e.name[:-5], Path(e.path))
                        for e in it
                        if e.name.endswith(".json") and not e.name.startswith(".")
                    ]
            except FileNotFoundError:
                continue
        return out

    def _loop(self, net_start: float) -> int:
        args = self.args
        next_rescan = self.clock() + RESCAN_SECONDS
        last_new = self.clock()
        while True:
            now = self.clock()
            timeout = next_rescan - now
            if args.idle_timeout is not None:
                timeout = min(timeout, last_new + args.idle_timeout - now)
            self.wake.wait(max(0.0, timeout))
            self.wake.clear()
            with self._lock:
                arrived, self._arrived = self._arrived, []
            cands: dict[str, Path | None] = {eid: self.layout.pending / f"{eid}.json" for eid in arrived}
            if self.clock() >= next_rescan:
                cands.update(self._rescan(net_start))
                next_rescan = self.clock() + RESCAN_SECONDS
            fresh = self._read(cands)
            if fresh:
                fresh.sort()
                if args.count is not None:
                    fresh = fresh[: args.count - self.printed]
                self.printer.batch(fresh)
                self.done.update(f.id for f in fresh)
                self.printed += len(fresh)
                last_new = self.clock()
                if args.count is not None and self.printed >= args.count:
                    return 0
            if args.idle_timeout is not None and self.clock() - last_new >= args.idle_timeout:
                return self._idle_exit()

    def _idle_exit(self) -> int:
        from .output import error

        args = self.args
        if args.count is not None:
            error(f"idle for {args.idle_timeout:g}s after {self.printed} of {args.count} events")
            return 1
        if not self.printed:
            error(
                f"no events match {describe(args, self.states)} in {self.layout.root} (idle for {args.idle_timeout:g}s)"
            )
            return 1
        return 0

    def _rescan(self, net_start: float) -> dict[str, Path | None]:
        from ..query import open_index

        cands: dict[str, Path | None] = {}
        live = {eid: path for eid, path in self._live()}
        for eid, state in self.waiting.items():
            path = live.get(eid)
            if path is None:
                cands[eid] = None  # moved on (processed, dead): find it
            elif _state_of(self.layout, path) != state:
                cands[eid] = path
        for eid, path in live.items():
            if eid not in self.done and eid not in self.waiting:
                cands[eid] = path
        if self.index is None:
            self.index = open_index(self.layout)
        if self.index is not None:
            since = max(net_start, time.time() - NET_LOOKBACK)
            for r in self.index.newest(["processed", "dead"], since=since):
                eid = str(r[0])
                if eid not in self.done and eid not in cands and eid not in self.waiting:
                    cands[eid] = getattr(self.layout, str(r[7])) / f"{eid}.json"
        return cands

    def _read(self, cands: dict[str, Path | None]) -> list[Any]:
        from ..ids import is_event_id
        from ..query import find, load, load_or_find

        out = []
        for eid, path in cands.items():
            if eid in self.done:
                self.waiting.pop(eid, None)
                continue
            if path is None:
                f = find(self.layout, eid, self.on_damaged)
            elif is_event_id(eid):
                state = "pending" if path.parent == self.layout.pending else _state_of(self.layout, path)
                f = load_or_find(self.layout, path, state, eid, self.on_damaged)
            else:
                f = load(path, "pending", self.on_damaged)
            if f is None:
                # Damaged (reported), or gone entirely (pruned, quarantined): nothing to show.
                self.waiting.pop(eid, None)
                self.done.add(eid)
                continue
            if not self.sel.match(f.event):
                self.waiting.pop(eid, None)
                self.done.add(eid)
                continue
            if f.state in self.states:
                self.waiting.pop(eid, None)
                out.append(f)
            elif FLOW[f.state] < max(FLOW[s] for s in self.states):
                self.waiting[eid] = f.state  # e.g. --state processed: look again when it has moved on
            else:
                self.waiting.pop(eid, None)
                self.done.add(eid)
        return out


def _state_of(layout: Any, path: Path) -> str:
    parent = path.parent
    for state in ("pending", "processed", "dead"):
        if parent == getattr(layout, state):
            return state
    return "inflight"
