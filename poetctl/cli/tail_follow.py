"""``poetctl tail -f``: following new events as they arrive (see :mod:`poetctl.cli.tail`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tail_run import Printer, TailArgs

FLOW = {"pending": 0, "inflight": 1, "processed": 2, "dead": 2}
RESCAN_SECONDS = 1.0
# How far back (event time) the index safety net looks for events that came and went
# between two rescans without a watchdog notice (inotify overflow).
NET_LOOKBACK = 30.0


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
        self._index_warned = False  # warn once if the index cannot be read
        self.started = time.time()

    # watchdog thread
    def _arrival(self, path: str) -> None:
        name = os.path.basename(path)
        if name.endswith(".json") and not name.startswith("."):
            with self._lock:
                self._arrived.append(name[:-5])
            self.wake.set()

    def run(self) -> int:
        from ..query import SMALL_SPOOL, newest, open_index

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
        # Old news too: whatever the index already has from around our start.
        self.done.update(str(r[0]) for r in self._index_rows(net_start))
        observer = self._watch()
        try:
            idx = self.index if self.index is not None and self._index_has(SMALL_SPOOL) else None
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
            from .tail_run import describe

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
            for r in self._index_rows(since):
                eid = str(r[0])
                if eid not in self.done and eid not in cands and eid not in self.waiting:
                    cands[eid] = getattr(self.layout, str(r[7])) / f"{eid}.json"
        return cands

    def _index_rows(self, since: float) -> list[Any]:
        """Processed/dead index rows since ``since``; none (and the index dropped, to be reopened at the
        next rescan) if reading it fails: derived data, e.g. read immutable while a starting daemon
        checkpoints into it, must not end the follow."""
        import sqlite3

        if self.index is None:
            return []
        try:
            return list(self.index.newest(["processed", "dead"], since=since))
        except sqlite3.DatabaseError as exc:
            self._drop_index(exc)
            return []

    def _index_has(self, n: int) -> bool:
        import sqlite3

        from ..query import has_rows

        if self.index is None:
            return False
        try:
            return has_rows(self.index, n)
        except sqlite3.DatabaseError as exc:
            self._drop_index(exc)
            return False

    def _drop_index(self, exc: BaseException) -> None:
        from ..query import index_unusable

        if self.index is not None:
            self.index.close()
            self.index = None
        if not self._index_warned:
            self._index_warned = True
            index_unusable(exc)

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
