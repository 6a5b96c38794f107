"""The generic daemon loop: fetch, dispatch by key, handle, apply outcomes. No backend in sight.

::

    consumer.fetch -> Loop._dispatch -> KeyWorker (handlers, follow-ups) -> outcome
                   -> Loop._apply -> consumer.ack | fail | dead ; middleware.on_outcome

It talks to a :class:`~poetctl.transport.Consumer` only, imports no backend
and no file code, and reads time only through its injected ``clock`` (retry
times, expiry, handler durations), so a test can step it (:meth:`Loop.step`)
with a fake clock. With ``workers=1`` (and always in tests) the worker runs
inline on the caller's thread; with more, each worker is a thread and owns
the keys that hash to it.

Outcomes are applied on the thread that produced them, right after the
handler: the consumer is thread-safe, and an ack that waited for another
thread would widen the window in which a crash re-runs a finished handler.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase

from ..transport import Consumer, Delivery, dead_letter_info
from .handling import CauseContext, IdleSyncer, Job, KeyWorker, Sub, UrgentGate, start_thread
from .middleware import Hooks, Middleware, Stats
from .outcomes import DONE, EXPIRED, RELEASED, Dead, Done, Failed, Outcome
from .retries import RetryPolicy

EXIT_OK, EXIT_SOMETHING_DEAD, EXIT_TRY_AGAIN = 0, 1, 75


class Loop:
    """Processes what ``consumer`` leases with ``subscriptions``; ``run()`` returns the exit code.

    ``cause`` is the router (follow-ups emitted inside a handler are buffered
    and committed only if it succeeds). ``timeouts`` maps handler names to
    time limits in seconds (a subscription's own ``timeout`` attribute, when
    it has one, wins). ``middleware`` runs after the built-in :class:`Stats`.
    """

    def __init__(
        self,
        consumer: Consumer,
        subscriptions: Sequence[Sub],
        cause: CauseContext,
        *,
        policy: RetryPolicy | None = None,
        workers: int = 1,
        clock: Callable[[], float] = time.time,
        middleware: Sequence[Middleware] = (),
        timeouts: Mapping[str, float] | None = None,
        fetch_limit: int = 256,
        max_inflight: int = 4096,
        idle_wait: float = 0.5,
    ) -> None:
        if workers < 1 or fetch_limit < 1 or max_inflight < 1:
            raise ValueError("workers, fetch_limit and max_inflight must be >= 1")
        self.consumer = consumer
        self.subscriptions = subscriptions
        self.cause = cause
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.stats = Stats(clock)
        self.hooks = Hooks([self.stats, *middleware])
        self._outcome_hooks = self.hooks.outcome
        self.timeouts = dict(timeouts or {})
        self.fetch_limit = fetch_limit
        self.max_inflight = max_inflight
        self.idle_wait = idle_wait
        self.inline = workers == 1
        self.gate = UrgentGate()  # with worker threads: normal work waits a moment for a high delivery's start
        self.workers = [
            KeyWorker(i, consumer, cause, self.policy, clock, self.hooks, self._apply, self.gate)
            for i in range(workers)
        ]
        self.error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._syncer: IdleSyncer | None = None
        self._subs_cache: dict[str, tuple[tuple[Sub, float | None], ...]] = {}
        self._subs_seen = -1
        self._inflight = 0
        self._count_lock = threading.Lock()
        self._started = self._stopping = self._closed = False
        self._more = False
        self._quiet_at = -1  # stats.activity when a fetch last came back empty (for --once)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Recover dead consumers' work and start worker threads (``step``/``run`` call it once)."""
        if self._started:
            return
        self._started = True
        self.hooks.on_recover(self.consumer.recover())
        if not self.inline:
            # Workers ask for their idle syncs and go on to the next delivery (see IdleSyncer).
            self._syncer = IdleSyncer(self.consumer, self._worker_failed)
            for w in self.workers:
                w.sync_soon = self._syncer.request
            self._threads = [start_thread(w, self._worker_failed, self.consumer.interrupt) for w in self.workers]

    def request_stop(self) -> None:
        """Ask ``run`` to stop after the running handlers. Safe in a signal handler: sets a flag, wakes."""
        self._stopping = True
        for w in self.workers:
            w.stop_requested = True
        self.consumer.interrupt()

    def close(self) -> None:
        """Shut down: workers finish their current delivery, the rest is handed back, the consumer closed."""
        if self._closed:
            return
        self._closed = True
        self.request_stop()
        for w in self.workers:
            w.inbox.put(None)
        for t in self._threads:
            t.join()
        if self._syncer is not None:
            self._syncer.close()  # before the consumer closes: no sync on a closed consumer
        left = [d for w in self.workers for d in w.leftovers()]
        if left:
            self.consumer.release(left)
            with self._count_lock:
                self._inflight -= len(left)
            for d in left:
                self.hooks.on_outcome(d, RELEASED)
        self.consumer.close()

    # -- rounds -----------------------------------------------------------------------------
    def step(self) -> int:
        """One round: lease what is due (up to capacity), dispatch it, run inline work that is due.

        Returns how many deliveries were leased or handled (0: nothing to do now;
        parked retries wait for their time).
        """
        self.start()
        self._raise_worker_error()
        n = 0
        room = self.max_inflight - self._inflight
        if self.gate.waiting > 0:
            self.gate.hold()  # a high delivery is about to start on a worker: no claims competing with it
        if room > 0 and not self._stopping:
            activity = self.stats.activity
            fetched = self.consumer.fetch(min(room, self.fetch_limit))
            if fetched.recovered:  # a rescan or a bucket takeover recovered a dead consumer's work
                self.hooks.on_recover(fetched.recovered)
            self.hooks.on_fetch(fetched)
            self._more = fetched.more
            if fetched.deliveries:
                n += len(fetched.deliveries)
                self._dispatch(fetched.deliveries)
            elif not fetched.quarantined:
                self._quiet_at = activity
        if self.inline and not self._stopping:
            n += self.workers[0].step(block=False)
        return n

    def run(self, once: bool = False) -> int:
        """Run until :meth:`request_stop` (or, with ``once``, until nothing is due); the exit code.

        ``once``: 0 all processed; 1 something dead-lettered, expired or
        quarantined; 75 something waits for a retry (handed back) or for another consumer.
        """
        try:
            while not self._stopping:
                if self.step() or self._more:
                    continue
                if once and self.finished():
                    break
                timeout = self.idle_wait if not self._inflight else min(self.idle_wait, 0.05)
                due = self.next_due()
                if due is not None:
                    timeout = min(timeout, max(0.0, due - self.clock()))
                self.consumer.wait(timeout)
        finally:
            self.close()
        self._raise_worker_error()
        s = self.stats
        if s.dead or s.corrupt or s.expired:
            return EXIT_SOMETHING_DEAD
        if s.handed_back or s.deferred:
            return EXIT_TRY_AGAIN
        return EXIT_OK

    def finished(self) -> bool:
        """Nothing due: a fetch after the last activity found nothing, and only parked retries remain.

        Handlers publish follow-ups after the fetch that found their causes, so
        an empty fetch counts only if nothing happened since it.
        """
        if self._more or any(w.has_work() for w in self.workers):
            return False
        return self._quiet_at == self.stats.activity

    def next_due(self) -> float | None:
        """The earliest parked retry's time (None if none)."""
        dues = [d for w in self.workers if (d := w.next_timer()) is not None]
        return min(dues) if dues else None

    @property
    def inflight(self) -> int:
        """Leased deliveries not finished (parked retries included)."""
        return self._inflight

    # -- dispatch and outcomes --------------------------------------------------------------------
    def _dispatch(self, deliveries: list[Delivery]) -> None:
        with self._count_lock:
            self._inflight += len(deliveries)
        nw = len(self.workers)
        batches: list[list[Job]] = [[] for _ in range(nw)]
        urgent = [False] * nw
        hurry = 0
        for d in deliveries:
            subs = self._subs_for(d.event.type)
            if not subs:
                self._apply(d, self._unhandled(d))
                continue
            # crc32 % 256 (the spool's key buckets) before % workers: a key's worker stays what it was.
            i = zlib.crc32(d.key.encode()) % 256 % nw if nw > 1 else 0
            job = Job(d, subs)
            batches[i].append(job)
            if d.event.priority == "high":
                urgent[i] = True
                if not self.inline:
                    job.urgent = True
                    hurry += 1
        for w, b, u in zip(self.workers, batches, urgent, strict=True):
            if b:
                w.put(b, u)
        if hurry:
            self.gate.close(hurry)  # after the puts: a job that starts first leaves the count at 0

    def _unhandled(self, d: Delivery) -> Outcome:
        """No subscriber: processed at once (expired ones dead-lettered, as they would be with one)."""
        now = self.clock()
        exp = d.event.expires_at
        if exp is not None and exp < now:
            return Dead(EXPIRED, dead_letter_info(d.id, EXPIRED, d.record, now, {"expired_at": exp, "handled": False}))
        return DONE

    def _apply(self, d: Delivery, outcome: Outcome) -> None:
        """The consumer side: apply one outcome through the transport (any thread)."""
        c = self.consumer
        if isinstance(outcome, Done):
            c.ack(d)
        elif isinstance(outcome, Failed):
            c.fail(d, outcome.attempt, outcome.retry_at)
        elif isinstance(outcome, Dead):
            c.dead(d, outcome.reason, outcome.info)
        if not isinstance(outcome, Failed):
            with self._count_lock:
                self._inflight -= 1
        for hook in self._outcome_hooks:
            hook(d, outcome)

    def _subs_for(self, event_type: str) -> tuple[tuple[Sub, float | None], ...]:
        if len(self.subscriptions) != self._subs_seen:  # subscribed since: match afresh
            self._subs_cache.clear()
            self._subs_seen = len(self.subscriptions)
        subs = self._subs_cache.get(event_type)
        if subs is None:
            subs = tuple(
                (s, getattr(s, "timeout", None) or self.timeouts.get(s.name))
                for s in self.subscriptions
                if s.pattern == event_type or fnmatchcase(event_type, s.pattern)
            )
            self._subs_cache[event_type] = subs
        return subs

    def _worker_failed(self, exc: BaseException) -> None:
        self.error = exc
        self.request_stop()

    def _raise_worker_error(self) -> None:
        if self.error is not None:
            raise self.error


__all__ = ["EXIT_OK", "EXIT_SOMETHING_DEAD", "EXIT_TRY_AGAIN", "Loop"]
