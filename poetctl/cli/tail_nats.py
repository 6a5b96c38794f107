"""``poetctl tail`` in nats mode: the newest events of the stream, and ``-f`` following it.

The same selection, output and exit codes as on the spool (:mod:`.tail`):
patterns become filter subjects, ``--since`` a start time, and ``-f`` reads
new messages from an ephemeral consumer that starts after the stream's last
sequence as it was before the newest events were shown (nothing falls between).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import NoMatch
from .tail_follow import FLOW

if TYPE_CHECKING:
    from .tail_run import Printer, TailArgs

WAIT = 1.0  # longest single wait for new messages (the idle timeout is checked between waits)


def where(t: Any) -> str:
    return f"NATS {t.settings.shown_servers()} stream {t.settings.stream}"


def tail_nats(cfg: Any, args: TailArgs, sel: Any, states: Sequence[str], printer: Printer) -> int:
    """Print as the spool's tail does; the exit code (0, or 1 from ``-f``'s idle timeout)."""
    from ..backends.nats import query
    from .mode import nats_transport
    from .tail_run import describe

    t = nats_transport(cfg)
    try:
        if not args.follow:
            found = query.newest(t, sel, states, args.lines) if args.lines else []
            if not found:
                if args.lines == 0:
                    raise NoMatch("no events requested (-n 0)")
                raise NoMatch(f"no events match {describe(args, states)} in {where(t)}")
            printer.batch(list(reversed(found)))
            return 0
        return NatsFollower(t, sel, states, printer, args).run()
    finally:
        t.close()


class NatsFollower:
    """``tail -f`` on the stream: the last N, then each new matching event once, when in a wanted state.

    An event that arrives in a state not wanted yet (``--state processed``)
    waits and is looked up again until it reaches one (or passes them).
    """

    def __init__(
        self,
        t: Any,
        sel: Any,
        states: Sequence[str],
        printer: Printer,
        args: TailArgs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.t = t
        self.sel = sel
        self.states = tuple(states)
        self.printer = printer
        self.args = args
        self.clock = clock
        self.done: set[str] = set()
        self.waiting: dict[str, str] = {}
        self.printed = 0
        self.top = max(FLOW[s] for s in self.states)

    def run(self) -> int:
        from ..backends.nats import query

        after = query.last_seq(self.t)  # before the newest are read: nothing can fall between the two
        initial = query.newest(self.t, self.sel, self.states, self.args.lines) if self.args.lines else []
        if self.args.count is not None:
            initial = initial[: self.args.count]
        initial.reverse()
        if self._show(initial):
            return 0
        cursor = query.Cursor(self.t, self.sel, after)
        try:
            return self._loop(cursor)
        finally:
            cursor.close()

    def _show(self, found: list[Any]) -> bool:
        """Print ``found``; True once ``--count`` is reached."""
        if self.args.count is not None:
            found = found[: self.args.count - self.printed]
        self.printer.batch(found)
        self.done.update(f.id for f in found)
        self.printed += len(found)
        return self.args.count is not None and self.printed >= self.args.count

    def _loop(self, cursor: Any) -> int:
        from ..backends.nats import query

        args = self.args
        last_new = self.clock()
        while True:
            wait = WAIT
            if args.idle_timeout is not None:
                wait = max(0.0, min(wait, last_new + args.idle_timeout - self.clock()))
            fresh = []
            for s in cursor.poll(wait):
                if s.id in self.done:
                    continue
                if s.state in self.states:
                    self.waiting.pop(s.id, None)
                    fresh.append(s)
                elif FLOW.get(s.state, 9) < self.top:
                    self.waiting[s.id] = s.state
                else:
                    self.done.add(s.id)
            if self.waiting:
                fresh += self._moved_on(query)
            if fresh:
                fresh.sort(key=lambda s: (s.timestamp, s.id))
                if self._show(fresh):
                    return 0
                last_new = self.clock()
            if args.idle_timeout is not None and self.clock() - last_new >= args.idle_timeout:
                return self._idle_exit()

    def _moved_on(self, query: Any) -> list[Any]:
        """Waiting events that have reached a wanted state (looked up by id)."""
        now = query.states_of(self.t, list(self.waiting))
        ready = [i for i, st in now.items() if st in self.states and i not in self.done]
        for i, st in now.items():
            if st not in self.states and FLOW.get(st, 9) >= self.top:
                self.waiting.pop(i, None)
                self.done.add(i)
        if not ready:
            return []
        got = query.lookup(self.t, ready)
        for i in ready:
            self.waiting.pop(i, None)
        return [got[i] for i in ready if i in got and got[i].state in self.states]

    def _idle_exit(self) -> int:
        from .output import error
        from .tail_run import describe

        args = self.args
        if args.count is not None:
            error(f"idle for {args.idle_timeout:g}s after {self.printed} of {args.count} events")
            return 1
        if not self.printed:
            error(f"no events match {describe(args, self.states)} in {where(self.t)} (idle for {args.idle_timeout:g}s)")
            return 1
        return 0


__all__ = ["NatsFollower", "tail_nats"]
