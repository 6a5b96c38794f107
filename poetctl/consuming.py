"""The in-process consumer behind ``EventRouter.start`` and ``run_until_idle`` (see :mod:`poetctl.inprocess`).

:class:`Consuming` builds the same daemon loop as ``poetctl daemon`` - on the
spool the :class:`~poetctl.daemon.core.Daemon` itself, on other backends a
:class:`~poetctl.daemon.loop.Loop` over ``transport.consumer()`` - and either
runs it on a background thread or steps it on the caller's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .daemon.middleware import Middleware
from .daemon.outcomes import RELEASED, Failed
from .errors import UsageError

if TYPE_CHECKING:
    from .daemon.loop import Loop
    from .daemon.outcomes import Outcome
    from .router import EventRouter
    from .transport import Delivery, Fetched


class _Tally(Middleware):
    """What ``run_until_idle`` and ``close`` need to know: fetches, outcomes, what was handed back."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.fetches = 0
        self.last_empty = 0  # number of the last fetch that leased nothing
        self.handled = 0
        self.released: list[str] = []

    def on_fetch(self, fetched: Fetched) -> None:
        with self.cond:
            self.fetches += 1
            if not fetched.deliveries and not fetched.quarantined:
                self.last_empty = self.fetches
            self.cond.notify_all()

    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        with self.cond:
            if outcome is RELEASED:
                self.released.append(delivery.id)
            elif not isinstance(outcome, Failed):
                self.handled += 1
            self.cond.notify_all()


class Consuming:
    """One in-process consumer: a daemon loop, stepped by the caller or run on a background thread."""

    def __init__(self, router: EventRouter, workers: int | None, stepped: bool = False) -> None:
        self.tally = _Tally()
        self.error: BaseException | None = None
        self.stop_requested = threading.Event()  # set once stop() has asked the loop to stop
        self._thread: threading.Thread | None = None
        table = dict(router.config.daemon)
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise UsageError(f"workers {workers!r}: expected a whole number >= 1")
        if getattr(router.transport, "layout", None) is not None:
            from .daemon.core import Daemon, DaemonOptions

            # The CLI daemon's options from [daemon]; stepped like --once (no watcher, no health events).
            opts = DaemonOptions.from_config(table, workers=workers, once=stepped or None)
            self.loop: Loop = Daemon(router, opts, middleware=[self.tally]).loop
        else:
            from .daemon.loop import Loop
            from .inline import retry_policy

            clock: Callable[[], float] = getattr(router.transport, "clock", None) or time.time
            self.loop = Loop(
                router.transport.consumer(),
                router.subscriptions,
                router,
                policy=retry_policy(router),
                workers=workers or int(table.get("workers", 4)),
                clock=clock,
                middleware=[self.tally],
                max_inflight=int(table.get("max_inflight", 4096)),
            )

    # -- background ---------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.start()  # recovery and worker threads before returning: errors surface here
        self._thread = threading.Thread(target=self._main, name="poetctl-inprocess", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.loop.run(once=False)
        except BaseException as exc:  # reported by run_until_idle / close; the thread must not die silently
            self.error = exc
            from .daemon import log

            log.warning("in-process consumer stopped", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self.tally.cond:
                self.tally.cond.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, timeout: float | None) -> int:
        """Until the background loop has found nothing due after this call (parked retries aside)."""
        t = self.tally
        deadline = None if timeout is None else time.monotonic() + timeout
        with t.cond:
            seen, handled = t.fetches, t.handled
        self.loop.consumer.interrupt()  # fetch now: what was just emitted may not have woken it yet
        with t.cond:
            while not (t.last_empty > seen and self.loop.finished()):
                if self.error is not None or not self.running:
                    raise UsageError(f"the in-process consumer stopped: {self.error!r}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"still busy after {timeout} s")
                # The loop marks itself quiet just after on_fetch: look again shortly.
                t.cond.wait(0.02 if left is None else min(0.02, left))
            return t.handled - handled

    def stop(self) -> list[str]:
        """Stop after the running handlers; what was leased and not finished is handed back (its ids)."""
        self.loop.request_stop()
        self.stop_requested.set()
        if self._thread is not None:
            self._thread.join()
        else:
            self.loop.close()
        return list(self.tally.released)

    # -- stepped (not started) ------------------------------------------------------------------
    def step_until_idle(self, timeout: float | None) -> int:
        """Run the loop on this thread until nothing is due now; then close it (parked retries handed back)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = self.loop
        try:
            while True:
                n = loop.step()
                if n == 0 and loop.finished():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"still busy after {timeout} s")
                if n == 0:
                    loop.consumer.wait(0.01)  # e.g. the spool's mover is renaming a claim batch
        finally:
            loop.close()
        return self.tally.handled


__all__ = ["Consuming"]
