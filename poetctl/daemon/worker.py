"""Worker threads: run handlers for the keys assigned to them, in order.

Each partition key maps to exactly one worker (its lock bucket % workers), so a
worker sees a key's events in claim order and handles them one at a time. A
failing handler does not sleep: the event's key is parked with a timer (the
retry backoff) while the worker carries on with other keys; later events of a
parked key wait behind it, which is what keeps per-key order through retries.
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
from typing import TYPE_CHECKING

from ..backends.fs.journal import Attempt, Record, dead_letter
from ..event import Event
from ..router import Subscription
from . import log
from .outcomes import EXHAUSTED, PERMANENT, Permanent, Retry
from .retries import DIED

if TYPE_CHECKING:
    from .core import Daemon

FLUSH_EVERY = 512


@dataclass(slots=True)
class Job:
    """A claimed event and what its handling needs."""

    event: Event
    path: str
    name: str
    key: str
    bucket: int
    subs: list[Subscription]
    record: Record


class Outcome:
    PROCESSED = "processed"
    DEAD = "dead"
    EXPIRED = "expired"
    HANDED_BACK = "handed_back"
    RETRY = "retry"


class Worker(threading.Thread):
    """Handles jobs of its keys; communicates with the daemon through queues only."""

    def __init__(self, daemon: Daemon, index: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name=f"poetctl-worker-{index}", daemon=True)
        self.d = daemon
        self.index = index  # also this worker's running slot in the journal
        self.clock = clock
        self.inbox: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self.keyq: dict[str, deque[Job]] = {}
        self.ready: deque[str] = deque()
        self.timers: list[tuple[float, int, str]] = []
        self._seq = 0
        self._dirty = 0
        self.busy = False
        self.stop_requested = False

    # -- loop -----------------------------------------------------------------
    def run(self) -> None:
        """Thread mode: step until stopped, then hand back whatever is left."""
        try:
            while self.step(block=True):
                pass
        except BaseException as exc:  # a bug or I/O failure here must not be silent
            self.d.worker_failed(self, exc)
        finally:
            self.close()

    def step(self, block: bool) -> bool:
        """One round: take queued jobs, fire due retries, run up to 64 ready keys.

        ``block`` waits for input (thread mode); inline mode (``--workers 1``,
        driven by the daemon's main thread) never blocks. Returns False once
        the stop sentinel arrived.
        """
        if not self._take_input(block):
            return False
        self._fire_timers()
        if self.ready:
            self.busy = True
            for _ in range(64):
                if not self.ready or self.stop_requested:
                    break
                self._run_key(self.ready.popleft())
        if not self.ready:
            self._flush()
            if self.busy:
                self.busy = False
                self.d.wake.set()  # the main loop may be waiting for us to finish
        return not self.stop_requested

    def next_timer(self) -> float | None:
        """When the earliest parked retry is due (None if none)."""
        return self.timers[0][0] if self.timers else None

    def close(self) -> None:
        """Flush and hand every unfinished job back to pending (after the last step)."""
        self._flush()
        self._hand_back_all()
        self.busy = False

    def _take_input(self, block: bool = True) -> bool:
        """Move queued batches into key queues. Returns False on the stop sentinel."""
        if self.ready or not block:
            timeout = 0.0
        elif self.timers:
            timeout = max(0.0, min(0.5, self.timers[0][0] - self.clock()))
        else:
            timeout = 0.5
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is None:
                self.stop_requested = True
                return False
            for job in item:
                q = self.keyq.get(job.key)
                if q is None:
                    self.keyq[job.key] = deque((job,))
                    self.ready.append(job.key)
                else:
                    q.append(job)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return True

    def _fire_timers(self) -> None:
        now = self.clock()
        while self.timers and self.timers[0][0] <= now:
            _, _, key = heapq.heappop(self.timers)
            if key in self.keyq:
                self.ready.append(key)

    def _flush(self) -> None:
        if self._dirty:
            self.d.sync_processed()
            self._dirty = 0

    # -- one key ----------------------------------------------------------------
    def _run_key(self, key: str) -> None:
        q = self.keyq[key]
        # Run this key's events back to back while they succeed (cheap, keeps order).
        for _ in range(256):
            job = q[0]
            outcome = self._handle(job)
            if outcome == Outcome.RETRY:
                return
            q.popleft()
            if not q:
                del self.keyq[key]
                self.d.blocked_keys.discard(key)
                return
            if self.stop_requested:
                break
        self.ready.append(key)

    def _handle(self, job: Job) -> str:
        d = self.d
        ev = job.event
        now = self.clock()
        if ev.expires_at is not None and ev.expires_at < now:
            dead_letter(
                d.layout,
                job.path,
                ev.id,
                reason="expired",
                record=job.record,
                extra={"expired_at": ev.expires_at, "handled": False},
            )
            log.dead_lettered(ev.id, ev.type, "expired", None, job.record.attempts, None)
            d.finished(job, Outcome.EXPIRED)
            return Outcome.EXPIRED
        if job.record.failures and self._exhausted(job):
            return Outcome.DEAD
        subs = job.subs
        last = len(subs) - 1
        journal = d.journal
        slot = self.index
        for i, sub in enumerate(subs):
            if sub.name in job.record.done:
                continue
            buffer: list[tuple[Event, bool]] = []
            d.router.set_cause(ev, sub.name, buffer)
            # Counted before the handler runs: if it ends the process, recovery finds it running.
            journal.running(slot, ev.id, sub.name, ev.checksum, self._attempt(job, sub.name))
            try:
                sub.fn(ev)
                if buffer:
                    d.router.commit_events(buffer)
            except BaseException as exc:
                # BaseException too: sys.exit() or KeyboardInterrupt raised by a handler is
                # its own failure (the daemon's signal handlers only set flags, never raise).
                journal.idle(slot)
                return self._failed(job, sub, exc)
            finally:
                d.router.set_cause(None)
            journal.idle(slot)
            job.record.done.add(sub.name)
            if i != last:
                journal.done(ev.id, sub.name, ev.checksum)
        d.file_processed(job)
        self._dirty += 1
        if self._dirty >= FLUSH_EVERY:
            self._flush()
        d.finished(job, Outcome.PROCESSED)
        return Outcome.PROCESSED

    @staticmethod
    def _attempt(job: Job, handler: str) -> int:
        """The number of the attempt about to start (failures of this handler so far + 1)."""
        failures = job.record.failures
        return 1 + sum(1 for a in failures if a.handler == handler) if failures else 1

    def _exhausted(self, job: Job) -> bool:
        """Before running: dead-letter an event whose handler used up its attempts by dying.

        A failure that raises is dead-lettered as it happens (:meth:`_failed`); a
        death is only known to the next daemon, through the record recovery wrote.
        """
        d = self.d
        ev = job.event
        rec = job.record
        last = rec.failures[-1]
        for sub in job.subs:
            if sub.name in rec.done:
                continue
            mine = [a for a in rec.failures if a.handler == sub.name]
            if d.policy.exhausted(len(mine)):
                reason = "daemon_died" if mine[-1].error == DIED else "attempts_exhausted"
                dead_letter(d.layout, job.path, ev.id, reason=reason, record=rec)
                log.dead_lettered(ev.id, ev.type, reason, sub.name, len(mine), mine[-1].error)
                d.finished(job, Outcome.DEAD)
                return True
        if last.error == DIED:
            log.died_while_handling(ev.id, ev.type, last.handler, last.attempt, d.policy.max_attempts)
        return False

    def _failed(self, job: Job, sub: Subscription, exc: BaseException) -> str:
        d = self.d
        ev = job.event
        n = sum(1 for a in job.record.failures if a.handler == sub.name) + 1
        attempt = Attempt(
            handler=sub.name,
            attempt=n,
            at=self.clock(),
            error=log.error_text(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        job.record.failures.append(attempt)
        log.handler_failed(ev.id, ev.type, sub.name, exc, n, d.policy.max_attempts)
        permanent = isinstance(exc, Permanent)
        if permanent or d.policy.exhausted(n):
            reason = PERMANENT if permanent else EXHAUSTED
            d.journal.failed(ev.id, attempt, 0.0, ev.checksum)
            dead_letter(d.layout, job.path, ev.id, reason=reason, record=job.record)
            log.dead_lettered(ev.id, ev.type, reason, sub.name, n, attempt.error)
            d.finished(job, Outcome.DEAD)
            return Outcome.DEAD
        # A handler that knows when to come back (an HTTP 429's Retry-After) says so.
        due = attempt.at + (exc.after if isinstance(exc, Retry) else d.policy.delay(n))
        job.record.not_before = due
        d.journal.failed(ev.id, attempt, due, ev.checksum)
        self._seq += 1
        heapq.heappush(self.timers, (due, self._seq, job.key))
        d.blocked_keys.add(job.key)
        d.retry_scheduled(job)
        return Outcome.RETRY

    # -- shutdown -----------------------------------------------------------------
    def _hand_back_all(self) -> None:
        """Return every job not finished to pending (with its record), in order."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item:
                for job in item:
                    self.keyq.setdefault(job.key, deque()).append(job)
        for key, q in list(self.keyq.items()):
            for job in q:
                self.d.hand_back(job)
            self.d.blocked_keys.discard(key)
        self.keyq.clear()
        self.ready.clear()
        self.timers.clear()
