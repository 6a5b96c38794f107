"""Key workers: run the handlers of their keys' deliveries, in order, and report one outcome each.

Each key maps to one worker, so a worker sees a key's deliveries in fetch
order and handles them one at a time. A failing delivery does not sleep: its
key is parked with a timer (the retry time) while the worker goes on with
other keys; the key's later deliveries wait behind it, which keeps per-key
order through retries. The worker never calls ack/fail/dead itself: it
reports outcomes to a callable of the loop (the consumer side), and records
only what must be written as it happens - a delivery beginning, a handler
finishing - through the consumer.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..event import Event
from ..transport import Attempt, Consumer, Delivery, dead_letter_info
from ..upcasting import UpcastError, upcast_event
from .log import error_text
from .middleware import Hooks
from .outcomes import DIED, DONE, EXHAUSTED, EXPIRED, PERMANENT, Dead, Failed, Outcome, Permanent, Retry
from .retries import DIED as DIED_WHILE_HANDLING
from .retries import RetryPolicy
from .timeouts import TimedRunner

FLUSH_EVERY = 512  # outcomes between consumer syncs while busy
HOLD_LIMIT = 0.02  # longest the other workers and the loop wait for a high delivery to start (seconds)


class Sub(Protocol):
    """A subscription as the loop needs it (:class:`poetctl.router.Subscription` is one)."""

    @property
    def pattern(self) -> str: ...
    @property
    def fn(self) -> Callable[[Event], Any]: ...
    @property
    def name(self) -> str: ...


class CauseContext(Protocol):
    """The router's follow-up machinery (:class:`poetctl.router.EventRouter` is one)."""

    def set_cause(
        self, event: Event | None, handler: str = "", buffer: list[tuple[Event, bool]] | None = None
    ) -> None: ...

    def commit_events(self, built: list[tuple[Event, bool]]) -> list[bool]: ...


@dataclass(slots=True)
class Job:
    """A delivery and the subscriptions to run for it, each with its time limit (None: none)."""

    delivery: Delivery
    subs: tuple[tuple[Sub, float | None], ...]
    urgent: bool = False  # a high-priority delivery the UrgentGate waits for (until it starts)


class UrgentGate:
    """Holds normal work back while a high-priority delivery waits to start (worker threads only).

    With several worker threads and the loop claiming, the worker given a high
    delivery competes for the GIL with every other busy thread, and may wait a
    switch interval (5 ms) per thread at each step before its handler starts.
    While the gate is closed the other workers wait before starting their next
    delivery, and the loop before its next fetch. It opens when every urgent
    delivery has started (or was queued behind its key's earlier ones, where
    it cannot jump), and holds no one longer than :data:`HOLD_LIMIT` after it
    closed (a slow handler ahead of the urgent delivery must not stall the rest).
    Costs one attribute check per delivery while open.
    """

    def __init__(self) -> None:
        self.waiting = 0  # urgent jobs dispatched minus started (briefly negative: a start before the close)
        self._since = 0.0
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()

    def close(self, n: int) -> None:
        """``n`` urgent jobs were just queued (the loop's thread)."""
        with self._lock:
            self.waiting += n
            self._since = time.monotonic()
            if self.waiting > 0:
                self._open.clear()

    def started(self, job: Job) -> None:
        """``job`` (urgent) has begun (its consumer ``begin`` returned), or was queued behind its key's earlier ones."""
        job.urgent = False
        with self._lock:
            self.waiting -= 1
            if self.waiting <= 0:
                self._open.set()

    def hold(self) -> None:
        """Wait while the gate is closed, up to :data:`HOLD_LIMIT` after it closed."""
        left = self._since + HOLD_LIMIT - time.monotonic()
        if left > 0:
            self._open.wait(left)


Report = Callable[[Delivery, Outcome], None]


class KeyWorker:
    """Handles the jobs of its keys. ``step`` runs one round; ``run`` is the thread body."""

    def __init__(
        self,
        index: int,
        consumer: Consumer,
        cause: CauseContext,
        policy: RetryPolicy,
        clock: Callable[[], float],
        hooks: Hooks,
        report: Report,
        gate: UrgentGate | None = None,
    ) -> None:
        self.name = f"poetctl-worker-{index}"
        self.consumer = consumer
        self.cause = cause
        self.policy = policy
        self.clock = clock
        self.hooks = hooks
        self.report = report
        self.gate = gate or UrgentGate()
        self.inbox: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self.keyq: dict[str, deque[Job]] = {}
        self.ready: deque[str] = deque()
        self.urgent = False  # set by put() for a batch with a high event: step() takes input between keys
        self.timers: list[tuple[float, int, str]] = []
        self.runner = TimedRunner(self.name, clock)
        self.stop_requested = False
        self.busy = False
        self._lock = threading.Lock()
        self._outstanding = 0  # batches put and not yet taken into keyq
        self._seq = 0
        self._dirty = 0
        # Set by a threaded Loop (IdleSyncer.request): the worker asks for the sync and goes on.
        self.sync_soon: Callable[[], None] | None = None

    def _sync(self) -> None:
        self._dirty = 0
        if self.sync_soon is not None:
            self.sync_soon()
        else:
            self.consumer.sync()

    # -- rounds -------------------------------------------------------------------------
    def step(self, block: bool = False) -> int:
        """Take queued jobs, make due retries ready, run up to 64 ready keys; the deliveries run."""
        self._take_input(block)
        self._fire_timers()
        ran = 0
        for _ in range(64):
            if self.urgent:  # a high-priority delivery was queued: take it in now (it goes first)
                self.urgent = False
                self._take_input(False)
            if not self.ready or self.stop_requested:
                break
            ran += self._run_key(self.ready.popleft())
        if not self.ready and self._dirty:
            self._sync()
        with self._lock:
            self.busy = bool(self.ready)
        return ran

    def run(self, on_error: Callable[[BaseException], None], on_idle: Callable[[], None]) -> None:
        """Thread body: step until asked to stop. A failure here (not a handler's) stops the daemon."""
        try:
            while not self.stop_requested:
                if self.step(block=True) and not self.ready:
                    on_idle()
        except BaseException as exc:
            on_error(exc)

    def has_work(self) -> bool:
        """Something ready to run now, running, or queued; parked keys alone do not count."""
        with self._lock:
            return bool(self.ready) or self.busy or self._outstanding > 0

    def next_timer(self) -> float | None:
        return self.timers[0][0] if self.timers else None

    def leftovers(self) -> list[Delivery]:
        """After the last step: every delivery not finished, in order (to hand back)."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            for job in item or ():
                self.keyq.setdefault(job.delivery.key, deque()).append(job)
        out = [job.delivery for q in self.keyq.values() for job in q]
        self.keyq.clear()
        self.ready.clear()
        self.timers.clear()
        self.runner.close()
        return out

    def put(self, jobs: list[Job], urgent: bool = False) -> None:
        """Queue a batch (the loop's thread); ``urgent``: it holds a high-priority delivery."""
        with self._lock:
            self._outstanding += 1
        self.inbox.put(jobs)
        if urgent:
            self.urgent = True

    def _take_input(self, block: bool) -> None:
        timeout = 0.0
        if block and not self.ready:
            due = self.next_timer()
            timeout = 0.5 if due is None else max(0.0, min(0.5, due - self.clock()))
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is None:
                self.stop_requested = True
                return
            # Under the lock, with the count: has_work() never sees a batch in neither place.
            with self._lock:
                for job in item:
                    q = self.keyq.get(job.delivery.key)
                    if q is None:
                        self.keyq[job.delivery.key] = deque((job,))
                        if job.delivery.event.priority == "high":
                            self.ready.appendleft(job.delivery.key)  # ahead of other keys, never of its own
                        else:
                            self.ready.append(job.delivery.key)
                    else:
                        q.append(job)
                        if job.urgent:
                            self.gate.started(job)  # behind its key's earlier deliveries: no one waits for it
                self.busy = True
                self._outstanding -= 1
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _fire_timers(self) -> None:
        now = self.clock()
        while self.timers and self.timers[0][0] <= now:
            _, _, key = heapq.heappop(self.timers)
            if key in self.keyq:
                with self._lock:
                    self.ready.append(key)
                    self.busy = True

    # -- one key ----------------------------------------------------------------------------
    def _run_key(self, key: str) -> int:
        q = self.keyq[key]
        ran = 0
        gate = self.gate
        for _ in range(256):  # a key's deliveries back to back while they succeed: cheap, keeps order
            job = q[0]
            if not job.urgent and gate.waiting > 0 and not self.urgent:
                gate.hold()  # a high delivery waits to start elsewhere; not if it is ours (urgent is set first)
            try:
                outcome = self._handle(job)  # an urgent job opens the gate once begun (see _handle)
            finally:
                if job.urgent:
                    # Counted whatever the gate shows: a start before the loop's close() (the worker was
                    # quicker) must still cancel it, or the gate stayed closed and every later hold()
                    # stalled the loop and the workers for HOLD_LIMIT after each high dispatch. Here for
                    # the jobs that end before begin (expired, died too often) or whose begin raised.
                    gate.started(job)
            ran += 1
            self.report(job.delivery, outcome)
            self._dirty += 1
            if self._dirty >= FLUSH_EVERY:
                self._sync()
            if isinstance(outcome, Failed):
                self._seq += 1
                heapq.heappush(self.timers, (outcome.retry_at, self._seq, key))
                return ran
            q.popleft()
            if not q:
                del self.keyq[key]
                return ran
            if self.stop_requested or self.urgent:
                break
        self.ready.append(key)
        return ran

    def handle_now(self, job: Job) -> Outcome:
        """Run one job's handlers on the caller's thread and return its outcome (inline dispatch).

        The caller applies the outcome; nothing is queued, parked or reported.
        """
        return self._handle(job)

    def _handle(self, job: Job) -> Outcome:
        d = job.delivery
        ev, rec = d.event, d.record
        now = self.clock()
        if ev.expires_at is not None and ev.expires_at < now:
            extra = {"expired_at": ev.expires_at, "handled": False}
            return Dead(EXPIRED, dead_letter_info(ev.id, EXPIRED, rec, now, extra))
        died = rec.died()
        if died and (dead := self._died_too_often(job, died, now)) is not None:
            return dead
        self.consumer.begin(d)
        if job.urgent:
            # Begun: only now may the loop fetch again. Opened before begin, the gate let the loop's next fetch
            # take the consumer's lock first, and begin waited for that whole fetch (NATS: 30-160 ms at the tail).
            self.gate.started(job)
        try:  # handlers get the newest schema version; a failing upcast cannot succeed on retry
            ev = upcast_event(ev, getattr(self.cause, "upcasters", None))
        except UpcastError as exc:
            return self._failed(d, "upcast", Permanent(str(exc)), died)
        last = len(job.subs) - 1
        for i, (sub, limit) in enumerate(job.subs):
            if sub.name in rec.done:
                continue
            error = self._call(ev, sub, limit)
            if error is not None:
                return self._failed(d, sub.name, error, died)
            if i != last:
                self.consumer.done(d, sub.name)  # the ack records the last one
        return DONE

    def _died_too_often(self, job: Job, died: int, now: float) -> Dead | None:
        """Dead-letter without running when deaths used up the next handler's attempts.

        A handler that kills the process must not kill every daemon that picks the event up.
        """
        rec = job.delivery.record
        todo = [s.name for s, _ in job.subs if s.name not in rec.done]
        if not todo or rec.attempts_of(todo[0], died) < self.policy.max_attempts:
            return None
        r = rec.copy()
        # One attempt per death, so the dead letter's ``attempts`` counts them like failures.
        first = rec.attempts_of(todo[0]) + 1
        r.failures += [Attempt(todo[0], first + i, now, DIED_WHILE_HANDLING) for i in range(died)]
        return Dead(DIED, dead_letter_info(job.delivery.id, DIED, r, now))

    def _call(self, ev: Event, sub: Sub, limit: float | None) -> BaseException | None:
        """Run one handler and commit its follow-ups; the failure, or None."""
        buffer: list[tuple[Event, bool]] = []
        cause = self.cause
        hooks = self.hooks
        for before in hooks.before:
            before(ev, sub)
        start = self.clock() if hooks.after else 0.0  # nobody times it: no clock read per handler
        error: BaseException | None = None
        if limit is None:  # the common case: on this thread, no hand-off
            cause.set_cause(ev, sub.name, buffer)
            try:
                sub.fn(ev)
            except BaseException as exc:  # SystemExit, KeyboardInterrupt from a handler: a failure
                error = exc
            finally:
                cause.set_cause(None)
        else:

            def body() -> None:
                cause.set_cause(ev, sub.name, buffer)
                try:
                    sub.fn(ev)
                finally:
                    cause.set_cause(None)

            error = self.runner.call(body, limit, f"handler {sub.name!r}")
        if error is None and buffer:
            try:
                cause.commit_events(buffer)  # only now: a failed attempt's follow-ups never exist
            except Exception as exc:
                error = exc
        if hooks.after:
            seconds = max(0.0, self.clock() - start)
            for after in hooks.after:
                after(ev, sub, seconds, error)
        return error

    def _failed(self, d: Delivery, handler: str, exc: BaseException, died: int) -> Outcome:
        now = self.clock()
        n = d.record.attempts_of(handler, died) + 1
        text = "".join(traceback.format_exception(exc))
        attempt = Attempt(handler, n, now, error_text(exc), text)
        if isinstance(exc, Permanent) or self.policy.exhausted(n):
            reason = PERMANENT if isinstance(exc, Permanent) else EXHAUSTED
            r = d.record.copy()
            r.failures.append(attempt)
            return Dead(reason, dead_letter_info(d.id, reason, r, now))
        delay = exc.after if isinstance(exc, Retry) else self.policy.delay(n)
        return Failed(attempt, now + delay)


class IdleSyncer:
    """``consumer.sync()`` on a thread of its own, asked for by the worker threads.

    A worker that synced on its own thread held up the next delivery of its
    keys for the whole fsync (5-50 ms on a busy disk): with one key (all of a
    type), every event arriving meanwhile started that much later. Requests
    coalesce: one sync covers every outcome applied before it starts. What it
    makes durable is only against power loss (an applied outcome already
    survives the process), so a sync that runs a moment later widens nothing
    a crash can undo. A failing sync is reported to ``on_error`` (it stops the
    daemon, as a worker's would) and ends the thread.
    """

    def __init__(self, consumer: Consumer, on_error: Callable[[BaseException], None]) -> None:
        self.consumer = consumer
        self.on_error = on_error
        self._want = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="poetctl-sync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Sync soon (any thread; never blocks)."""
        self._want.set()

    def close(self) -> None:
        """Finish a requested sync, then end the thread (the consumer's close syncs what is left)."""
        self._stop = True
        self._want.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._want.wait()
            self._want.clear()  # before the sync: a request made during it asks for the next one
            if self._stop:
                return
            try:
                self.consumer.sync()
            except BaseException as exc:
                self.on_error(exc)
                return


def start_thread(
    worker: KeyWorker, on_error: Callable[[BaseException], None], on_idle: Callable[[], None]
) -> threading.Thread:
    """Run ``worker`` on its own (daemon) thread; the caller joins it at shutdown."""
    t = threading.Thread(target=worker.run, args=(on_error, on_idle), name=worker.name, daemon=True)
    t.start()
    return t


__all__ = [
    "FLUSH_EVERY",
    "HOLD_LIMIT",
    "CauseContext",
    "IdleSyncer",
    "Job",
    "KeyWorker",
    "Report",
    "Sub",
    "UrgentGate",
    "start_thread",
]
