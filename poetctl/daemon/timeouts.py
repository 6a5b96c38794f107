"""Handler time limits without killing anything.

A subscription with a timeout runs its handler on a helper thread while the
worker waits, reading the daemon's (injectable) clock. If the limit passes,
the worker gives the call up: it reports a :class:`HandlerTimeout` failure
(with the stack the handler was stuck in) and goes on with its other keys;
the helper thread is abandoned and a fresh one serves the next timed call.

Limits, plainly:

* Python cannot stop a thread. The abandoned handler runs on in the
  background until it returns; its effects still happen. Only its
  follow-ups are dropped (they were buffered for a commit that never comes).
* Its retry can start while the abandoned call still runs, so a handler
  with a timeout must tolerate overlapping calls for one event - as it must
  tolerate redelivery anyway (at-least-once).
* Each abandoned call holds a thread until it returns; :attr:`TimedRunner.abandoned`
  counts the ones still running. A handler that never returns leaks one
  thread per attempt, at most ``max_attempts`` per event.
* The clock is read every :data:`POLL` seconds of real time, so a limit is
  enforced to within that.

Handlers without a timeout run directly on the worker's thread: no hand-off cost.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from queue import SimpleQueue
from types import FrameType

from .outcomes import HandlerTimeout

POLL = 0.05


class _Call:
    __slots__ = ("abandoned", "done", "error", "fn")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.abandoned = False


class TimedRunner:
    """One worker's helper thread for handlers with a time limit. Used by one worker at a time."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self.clock = clock
        self._inbox: SimpleQueue[_Call | None] | None = None
        self._thread: threading.Thread | None = None
        self._lost: list[threading.Thread] = []

    @property
    def abandoned(self) -> int:
        """Abandoned calls still running."""
        self._lost = [t for t in self._lost if t.is_alive()]
        return len(self._lost)

    def call(self, fn: Callable[[], object], timeout: float, label: str) -> BaseException | None:
        """Run ``fn`` with a limit of ``timeout`` clock seconds; its exception, a HandlerTimeout, or None."""
        if self._inbox is None or self._thread is None:
            self._start()
        assert self._inbox is not None and self._thread is not None
        c = _Call(fn)
        deadline = self.clock() + timeout
        self._inbox.put(c)
        while not c.done.wait(min(POLL, max(0.0, deadline - self.clock()))):
            if self.clock() >= deadline:
                return self._abandon(c, timeout, label)
        return c.error

    def _abandon(self, c: _Call, timeout: float, label: str) -> HandlerTimeout:
        c.abandoned = True
        thread, inbox = self._thread, self._inbox
        assert thread is not None and inbox is not None
        frame = _frame_of(thread.ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        inbox.put(None)  # the thread exits once the abandoned call returns
        self._lost.append(thread)
        self._thread = self._inbox = None
        err = HandlerTimeout(f"{label} ran longer than its timeout of {timeout:g} s; abandoned, still running")
        err.add_note(f"where it was when abandoned:\n{stack}" if stack else "its stack was not available")
        return err

    def _start(self) -> None:
        inbox: SimpleQueue[_Call | None] = SimpleQueue()
        self._inbox = inbox
        self._thread = threading.Thread(target=_serve, args=(inbox,), name=f"{self.name}-timed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._inbox is not None:
            self._inbox.put(None)
        self._thread = self._inbox = None


def _frame_of(ident: int | None) -> FrameType | None:
    """The current frame of thread ``ident`` (None if it has ended).

    With the garbage collector paused: CPython before 3.12 can deadlock when a
    collection starts inside ``sys._current_frames()`` (it holds the runtime's
    thread-list lock while it builds the dict, and a finalizer run by the
    collection may need that lock; CPython gh-106883). Seen once as a hung
    test run in ``_abandon``.
    """
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames().get(ident or -1)
    finally:
        if was:
            gc.enable()


def _serve(inbox: SimpleQueue[_Call | None]) -> None:
    while True:
        c = inbox.get()
        if c is None:
            return
        try:
            c.fn()
        except BaseException as exc:  # the handler's failure is the caller's to report
            c.error = exc
        finally:
            c.done.set()


__all__ = ["POLL", "TimedRunner"]
