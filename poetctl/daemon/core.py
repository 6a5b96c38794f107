"""The daemon's main loop: scan, claim, dispatch, recover, heartbeat, shut down.

One main thread owns the pending directory: it lists it (watchdog only wakes
it up; the listing is the truth), reads and verifies each candidate,
quarantines what cannot be trusted, claims the rest by renaming them into
``events/inflight/<owner>/`` and hands them to workers by partition key.
Workers report back through a queue; the main thread keeps the counters,
writes the heartbeat and emits ``system.health``.

Per-key order across several daemons on one spool: a key hashes to one of
:data:`BUCKETS` lock files under ``run/buckets``; a daemon claims an event
only while holding its bucket's flock, and keeps it while it has unfinished
events of that bucket. A crashed daemon's locks die with it; its in-flight
events are returned to pending (recovery) before anyone claims that bucket.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..backends.fs.journal import (
    JOURNAL,
    Journal,
    Record,
    RecordStore,
    journal_record,
    parse_journal,
    quarantine,
    save_merged,
    stated_checksum_at,
)
from ..backends.fs.layout import FILE_MODE, SpoolLayout, fsync_dir
from ..backends.fs.listing import list_window
from ..backends.fs.owner import current_owner, owner_alive, process_start_ticks
from ..backends.fs.paths import BUCKET_LOCKS, HEARTBEATS, OWNER_LOCKS
from ..backends.fs.reader import FIRST_READ, READ_FLAGS, CorruptEvent, UnreadableEvent, decode_event, read_bytes
from ..backends.fs.reconcile import Reconciler
from ..backends.fs.safefs import LinkedDir, SpoolDir, open_dir
from ..backends.fs.writer import write_atomic
from ..config import DEFAULT_MAX_CAUSATION_DEPTH
from ..errors import InvalidData, SpoolIOError
from ..ids import time_of
from ..partition import DEFAULT_PARTITION_KEY, key_function, partition_key
from ..router import EventRouter, Subscription
from ..topics import check_subscription
from . import log
from .retries import RetryPolicy
from .worker import Job, Outcome, Worker

if TYPE_CHECKING:
    from ..backends.fs.mover import Mover

BUCKETS = 256
CLAIM_BATCH = 256  # events per claim batch handed to the mover
MOVER_SYNC_EVERY = 8192  # filed events between directory syncs while busy


@dataclass(slots=True)
class DaemonOptions:
    """Tunables; every one has a ``[daemon]`` key in poet.toml of the same name."""

    workers: int = 4
    once: bool = False
    rescan_interval: float = 5.0
    heartbeat_interval: float = 2.0
    health_interval: float = 60.0
    lease_seconds: float = 30.0
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    window: int = 100_000
    max_inflight: int = 4096
    partition_key: tuple[str, ...] = DEFAULT_PARTITION_KEY
    watch: bool = True
    index: bool = True
    # Start the completion mover (see mover.py) once a listing finds this many pending
    # events; 0 starts it with the daemon, a negative value never does.
    mover_backlog: int = 1024
    # Deepest follow-up chain a handler may extend (enforced by EventRouter.build).
    max_causation_depth: int = DEFAULT_MAX_CAUSATION_DEPTH

    @classmethod
    def from_config(cls, table: dict[str, Any], **overrides: Any) -> DaemonOptions:
        """Build from poet.toml's ``[daemon]`` table plus command-line ``overrides`` (None: not given).

        The table is checked against :mod:`poetctl.configspec` (``load_config``
        has already done so for a file); a bad or unknown key raises
        :class:`~poetctl.errors.ConfigError` naming it and its allowed range.
        Keys of the table that are not options of this class (read by others)
        are checked but not stored.
        """
        from ..configspec import check_section

        given = {k: v for k, v in overrides.items() if v is not None}
        checked = check_section("daemon", {**table, **given}, "daemon options")
        opts = cls()
        for k, v in checked.items():
            if k in cls.__dataclass_fields__:
                setattr(opts, k, tuple(v) if k == "partition_key" else v)
        return opts


@dataclass(slots=True)
class Counters:
    processed: int = 0
    dead: int = 0
    expired: int = 0
    corrupt: int = 0
    retries: int = 0
    handed_back: int = 0
    recovered: int = 0
    claimed: int = 0
    started: float = field(default_factory=time.time)


class Daemon:
    """Processes one spool until stopped. ``run()`` returns the process exit code."""

    def __init__(
        self, router: EventRouter, options: DaemonOptions | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.router = router
        self.opts = options or DaemonOptions()
        router.max_causation_depth = self.opts.max_causation_depth
        self.clock = clock
        self.layout: SpoolLayout = router.layout
        self.registry = router.registry
        self.max_bytes = router.config.max_event_bytes
        self.policy = RetryPolicy(self.opts.max_attempts, self.opts.backoff_base, self.opts.backoff_cap)
        self.owner = current_owner()
        self.inflight_dir = self.layout.inflight / self.owner
        self._inflight_prefix = f"{self.inflight_dir}/"
        self.processed_prefix = f"{self.layout.processed}/"
        self.pending_prefix = f"{self.layout.pending}/"
        self.heartbeat_dir = self.layout.root / HEARTBEATS
        self.bucket_dir = self.layout.root / BUCKET_LOCKS
        self.owner_lock_dir = self.layout.root / OWNER_LOCKS
        self.records = RecordStore(self.layout)
        self.counters = Counters()
        self.blocked_keys: set[str] = set()
        self.wake = threading.Event()
        self.done_q: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self.stop = False
        self.force = False
        self.error: BaseException | None = None
        self._subs_cache: dict[str, list[Subscription]] = {}
        self._bucket_fds: dict[int, int] = {}
        self._bucket_load = [0] * BUCKETS
        self._inflight = 0
        self._others_alive = False
        self._window: list[str] = []
        self._window_pos = 0
        self._skipped: set[str] = set()
        self._unconfirmed: set[str] = set()
        self._relist = False  # an unconfirmed name was skipped: list again before --once may finish
        self._deferred = 0
        self._pending_records: dict[str, Record] = {}
        self._oldest_pending_ms: int | None = None
        self._pending_seen = 0
        self._processed_dirty = threading.Lock()
        self._key_of = key_function(self.opts.partition_key)
        self._pending_fd = -1
        self._inflight_fd = -1
        self._observer: Any = None
        self.workers: list[Worker] = []
        self.journal: Journal
        self.indexer: Any = None
        self.inline = False
        self.mover: Mover | None = None
        self._owner_lock_fd = -1
        self._dead_owner_busy = False
        # The daemon honours [event_schemas] validation / POET_VALIDATION like emit does.
        self.validate = router.config.validation
        self._unreadable: set[str] = set()  # names reported as unreadable (once each)
        self.reconciler: Reconciler | None = None

    # -- public entry -------------------------------------------------------------------
    def run(self) -> int:
        """Run until signalled (or, with ``once``, until nothing is due). Returns the exit code."""
        self._start()
        try:
            self._loop()
        finally:
            self._shutdown()
        if self.error is not None:
            raise self.error
        if self.opts.once:
            if self.counters.dead or self.counters.corrupt or self.counters.expired:
                return 1
            if (self.counters.retries and self.counters.handed_back) or self._deferred:
                return 75
        return 0

    def request_stop(self, signum: int | None = None, frame: Any = None) -> None:
        """Signal handler: the first call asks for a graceful stop, the second for an immediate one.

        Python runs this on the main thread between bytecodes, not in the C
        signal context. The first call only sets flags. The second exits on the
        spot: the main thread may itself be inside a slow handler (inline mode),
        and "at once" must not wait for it; whatever was claimed stays in
        inflight/ and the next daemon recovers it.
        """
        if self.stop:
            self.force = True
            os._exit(130)
        self.stop = True
        if self.inline:
            self.workers[0].stop_requested = True  # stop after the current event
        self.wake.set()

    # -- start -----------------------------------------------------------------
    def _start(self) -> None:
        for sub in self.router.subscriptions:  # also those not added through subscribe()
            check_subscription(sub.pattern, sub.name)
        self.layout.init()
        for d in (self.heartbeat_dir, self.bucket_dir, self.owner_lock_dir):
            try:
                os.mkdir(d, 0o750)
            except FileExistsError:
                pass
        self._lock_owner()
        os.makedirs(self.inflight_dir, 0o750, exist_ok=True)
        # Directory descriptors for the per-event open and claim: one-component lookups.
        self._inflight_fd = os.open(self.inflight_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._open_pending()
        self.journal = Journal(self.inflight_dir, slots=self.opts.workers)
        # One worker runs inline on the main thread: no thread hand-offs, which on a
        # 2-core machine cost more than a fast handler itself (GIL and wake-up ping-pong).
        self.inline = self.opts.workers == 1
        if self.opts.index:
            from ..backends.fs.index import IndexWriter

            # Written by the main thread in batches (maybe_flush) in both modes: a writer
            # thread would trade the GIL with the main thread for every row it binds.
            self.indexer = IndexWriter(self.layout, threaded=False)
            self.indexer.open()
            alive = lambda o: owner_alive(o, self.heartbeat_dir, self.opts.lease_seconds)  # noqa: E731
            self.reconciler = Reconciler(self.layout, self.owner, alive, self.max_bytes)
            self.reconciler.start()
        self._recover(all_dead=True)
        self._reconcile()
        self._beat()
        self.workers = [Worker(self, i, self.clock) for i in range(self.opts.workers)]
        if not self.inline:
            for w in self.workers:
                w.start()
        if self.opts.watch and not self.opts.once:
            self._start_observer()
        if self.opts.mover_backlog == 0:
            self._start_mover()

    def _open_pending(self) -> None:
        """(Re)open ``events/pending``; done at start and whenever the directory was replaced."""
        fd = os.open(self.layout.pending, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if self._pending_fd >= 0:
            os.close(self._pending_fd)
        self._pending_fd = fd

    def _lock_owner(self) -> None:
        """Hold ``run/owners/<owner>.lock`` for as long as this daemon or its mover lives.

        Recovery takes a dead owner's in-flight directory only once it can lock
        this file: the mover child inherits the lock, so a daemon that died
        with completions queued is not recovered until they are filed.
        """
        path = self.owner_lock_dir / f"{self.owner}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._owner_lock_fd = fd

    def _start_mover(self) -> None:
        from ..backends.fs.mover import Mover

        try:
            self.mover = Mover(
                self.inflight_dir,
                self.layout.processed,
                pass_fds=(self._owner_lock_fd,),
                pending_dir=self.layout.pending,
            )
        except OSError as exc:
            log.warning("cannot start the completion mover; filing events here", error=exc.strerror or str(exc))
            self.opts.mover_backlog = -1

    def _start_observer(self) -> None:
        from ..backends.fs.watcher import start_watcher

        self._observer = start_watcher(str(self.layout.pending), self.wake)

    # -- main loop -------------------------------------------------------------------
    def _loop(self) -> None:
        opts = self.opts
        next_scan = 0.0
        next_beat = self.clock() + opts.heartbeat_interval
        next_health = self.clock() + opts.health_interval
        while not self.stop:
            self._drain_done()
            now = self.clock()
            woken = self.wake.is_set()
            self.wake.clear()
            if woken or now >= next_scan or self._window_pos < len(self._window):
                if now >= next_scan:
                    self._invalidate_window()
                    if not opts.once:
                        self._recover(all_dead=False)
                        self._reconcile(look=True)
                    next_scan = now + opts.rescan_interval
                    self._check_observer()
                elif woken and self._window_pos >= len(self._window):
                    self._invalidate_window()
                self._pump()
                self._flush_unhandled()
            if self.inline:
                self._run_inline()
            if self._inflight == 0 and self.journal.lines and (self.mover is None or self.mover.settled()):
                # Nothing in flight and every completion filed: the journal is history.
                self.journal.truncate()
            if self.force:
                os._exit(130)
            if now >= next_beat:
                self._beat()
                next_beat = now + opts.heartbeat_interval
            if now >= next_health and not opts.once:
                self._emit_health()
                next_health = now + opts.health_interval
            if opts.once and self._once_finished():
                break
            if self.error is not None:
                break
            if self._window_pos < len(self._window) and self._inflight < opts.max_inflight:
                continue
            timeout = min(0.05 if self._inflight else 0.5, max(0.0, next_scan - self.clock()))
            if self.inline and (due := self.workers[0].next_timer()) is not None:
                timeout = min(timeout, max(0.0, due - self.clock()))
            if self.indexer is not None:
                self.indexer.maybe_flush()
                if self.indexer.pending():
                    timeout = min(timeout, self.indexer.interval)
            if self.mover is not None and self.mover.backlog():
                self.mover.poll()
                self.mover.sync()  # idle: make what it filed durable (a no-op if already asked)
            self.wake.wait(timeout)

    def _once_finished(self) -> bool:
        """--once: stop when a listing taken after all activity found nothing due.

        Handlers emit follow-ups after the listing that found their causes, so
        an exhausted window is not enough: list again until a listing claims
        nothing (events waiting for a retry are handed back at shutdown).
        """
        if self._window_pos < len(self._window) or not self._listed_once:
            return False
        if any(w.busy or w.ready or not w.inbox.empty() for w in self.workers):
            return False
        now = self.clock()
        # Only the head of a key's queue can be waiting for a retry; the rest wait behind it.
        if not all(q[0].record.not_before > now for w in self.workers for q in w.keyq.values() if q):
            return False
        if self._activity() != self._activity_at_list or self._relist:
            self._invalidate_window()
            self.wake.set()
            return False
        return True

    def _activity(self) -> int:
        c = self.counters
        return c.claimed + c.corrupt + c.processed + c.dead + c.expired

    _activity_at_list = -1
    _listed_once = False

    # -- scanning and claiming ---------------------------------------------------------------
    def _invalidate_window(self) -> None:
        self._window = []
        self._window_pos = 0

    def _list_window(self) -> None:
        """List pending and keep the ``window`` oldest names (bounded memory at any backlog)."""
        pending = self.layout.pending
        oldest: int | None = None
        try:
            a, b = os.fstat(self._pending_fd), os.stat(pending)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                self._open_pending()
        except OSError as exc:
            raise SpoolIOError(f"cannot open {pending}: {exc.strerror}") from None

        listed = list_window(pending, self._pending_fd, self.opts.window)
        self._window = listed.names
        self._unconfirmed = listed.unconfirmed
        count = listed.count
        if self._window:
            first = self._window[0]
            oldest = time_of(first[:-5]) if first.endswith(".json") else None
            if oldest is None:
                try:
                    oldest = os.stat(pending / first, follow_symlinks=False).st_mtime_ns // 1_000_000
                except OSError:
                    oldest = None
        self._window_pos = 0
        self._skipped = set()
        self._relist = False
        self._deferred = 0
        self._pending_seen = count
        self._oldest_pending_ms = oldest
        self._pending_records = self.records.load_all() if count else {}
        if self.mover is None and 0 < self.opts.mover_backlog <= count:
            self._start_mover()
        self._listed_once = True
        self._activity_at_list = self._activity()

    def _pump(self) -> None:
        """Claim and dispatch as much of the window as capacity allows.

        Without a mover each event is claimed as it is read. With one, claims
        are batched and made by the mover child (pipelined: this thread reads
        and verifies batch k+1 while the child renames batch k); a batch's
        events are dispatched once its claims are answered, in window order,
        and every batch is answered before this returns.
        """
        if self._window_pos >= len(self._window):
            self._list_window()
        opts = self.opts
        pending = f"{self.layout.pending}/"
        self._batches = [[] for _ in self.workers]
        mover = self.mover if self.mover is not None and self.mover.alive else None
        cands: list[Job] = []
        outstanding: deque[tuple[int, list[Job]]] = deque()
        reserved = 0  # prepared but not yet answered
        self._claimed_now = 0
        window = self._window
        pos = self._window_pos
        try:
            while pos < len(window) and not self.stop:
                if self._inflight + self._claimed_now + reserved >= opts.max_inflight:
                    break
                name = window[pos]
                pos += 1
                job = self._prepare(pending + name, name, claim=mover is None)
                if self._window is not window:
                    break  # recovery put older events back: list again before claiming more
                if job is None:
                    continue
                if mover is None:
                    self._accept(job)
                    continue
                cands.append(job)
                reserved += 1
                if len(cands) >= CLAIM_BATCH:
                    outstanding.append((mover.claim([j.name for j in cands]), cands))
                    cands = []
                    if len(outstanding) >= 2:
                        token, jobs = outstanding.popleft()
                        reserved -= len(jobs)
                        self._confirm(mover.claim_result(token), jobs)
        finally:
            if self._window is window:
                self._window_pos = pos
            if mover is not None:
                if cands:
                    outstanding.append((mover.claim([j.name for j in cands]), cands))
                while outstanding:
                    token, jobs = outstanding.popleft()
                    self._confirm(mover.claim_result(token), jobs)
            self._dispatch(self._batches)
            self._batches = [[] for _ in self.workers]

    _batches: list[list[Job]] = []
    _claimed_now = 0

    def _accept(self, job: Job) -> None:
        """A claimed job: completed at once if nobody subscribed, else queued for its worker."""
        if not job.subs:
            self._complete_unhandled(job)
            return
        self._batches[job.bucket % len(self.workers)].append(job)
        self._claimed_now += 1
        if self._claimed_now % 256 == 0:
            self._dispatch(self._batches)
            self._batches = [[] for _ in self.workers]
            if self.inline:
                self._run_inline()
            elif self.indexer is not None:
                self.indexer.maybe_flush()

    def _confirm(self, results: bytes, jobs: list[Job]) -> None:
        """Take in the mover's answers for prepared ``jobs``: accept the claimed, forget the rest."""
        for job, ok in zip(jobs, results, strict=True):
            if ok == 49:  # b"1"
                self._claimed(job)
                self._accept(job)
            else:
                self._bucket_load[job.bucket] -= 1

    def _run_inline(self) -> None:
        """Inline mode: handle what was dispatched (and due retries) on this thread."""
        w = self.workers[0]
        while not self.stop and w.step(block=False) and (w.ready or not w.inbox.empty()):
            pass
        self._drain_done()
        if self.indexer is not None:
            self.indexer.maybe_flush()

    def _dispatch(self, batches: list[list[Job]]) -> None:
        for w, b in zip(self.workers, batches, strict=True):
            if b:
                self._inflight += len(b)
                w.inbox.put(b)

    def _prepare(self, path: str, name: str, claim: bool = True) -> Job | None:
        """Read, verify and claim one pending file; None if skipped, taken or quarantined.

        With ``claim=False`` the caller claims it (through the mover) and then
        calls :meth:`_claimed`; the job's bucket load is counted already.
        """
        if name.startswith("."):
            return None  # hidden files (.gitkeep, editors' swap files) are not events and not ours
        try:
            if not name.endswith(".json"):
                raise CorruptEvent("bad_name", "expected <event id>.json", where=path)
            # The common case inline (open, one read, close); anything unusual - an
            # error, an empty or large file - is re-read by read_bytes, which classifies it.
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=self._pending_fd)
                try:
                    data = os.read(fd, FIRST_READ)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                raise
            except OSError:
                data = b""
            if not data or len(data) >= FIRST_READ or len(data) > self.max_bytes:
                data = read_bytes(name, self.max_bytes, dir_fd=self._pending_fd, where=path)
            ev = decode_event(data, self.registry, where=path, expected_id=name[:-5], validate_payload=self.validate)
            if not self.validate:
                self._check_known(ev.type, path)
        except FileNotFoundError:
            return None
        except UnreadableEvent as exc:
            # Not the file's fault (permissions, too many open files): leave it, say so once.
            self._deferred += 1
            if name not in self._unreadable:
                if len(self._unreadable) >= 100_000:
                    self._unreadable.clear()
                self._unreadable.add(name)
                log.unreadable(path, exc.detail)
            return None
        except CorruptEvent as exc:
            if quarantine(self.layout, Path(path), exc.reason, exc.detail) is not None:
                self.counters.corrupt += 1
                log.quarantined(path, exc.reason, exc.detail)
            return None
        key = self._key_of(ev)
        if self._unconfirmed and name in self._unconfirmed:
            # Only the second listing showed it: an earlier event of its key may still be
            # unlisted (see listing.py). The key waits for the next listing, asked for now.
            self._skipped.add(key)
            self._relist = True
            self.wake.set()
            return None
        if key in self._skipped or key in self.blocked_keys:
            self._skipped.add(key)
            return None
        record = self._pending_records.get(ev.id)
        if record is not None and record.not_before > self.clock():
            self._skipped.add(key)
            self._deferred += 1
            return None
        bucket = zlib.crc32(key.encode()) % BUCKETS
        if bucket not in self._bucket_fds and not self._hold_bucket(bucket):
            self._skipped.add(key)
            if self._dead_owner_busy:
                self._deferred += 1  # a dead daemon's mover still files: --once says "try again" (75)
            return None
        if claim:
            try:
                os.rename(name, name, src_dir_fd=self._pending_fd, dst_dir_fd=self._inflight_fd)
            except FileNotFoundError:
                return None
        self._bucket_load[bucket] += 1
        job = Job(ev, self._inflight_prefix + name, name, key, bucket, self._subs_for(ev.type), record or Record())
        if claim:
            self._claimed(job)
        return job

    def _claimed(self, job: Job) -> None:
        self.counters.claimed += 1
        record = self._pending_records.pop(job.event.id, None)
        if record is not None:
            record.persisted = True

    def _subs_for(self, event_type: str) -> list[Subscription]:
        subs = self._subs_cache.get(event_type)
        if subs is None:
            subs = [
                s for s in self.router.subscriptions if s.pattern == event_type or fnmatchcase(event_type, s.pattern)
            ]
            self._subs_cache[event_type] = subs
        return subs

    def _complete_unhandled(self, job: Job) -> None:
        """No subscriber: straight to processed (expired ones to dead)."""
        self._inflight += 1
        if job.event.expires_at is not None and job.event.expires_at < self.clock():
            from ..backends.fs.journal import dead_letter

            dead_letter(
                self.layout,
                job.path,
                job.event.id,
                reason="expired",
                record=job.record,
                extra={"expired_at": job.event.expires_at, "handled": False},
            )
            log.dead_lettered(job.event.id, job.event.type, "expired", None, job.record.attempts, None)
            self.finished(job, Outcome.EXPIRED)
        else:
            self.file_processed(job)
            self.finished(job, Outcome.PROCESSED)
            self._processed_pending_sync = True

    _processed_pending_sync = False

    # -- buckets -------------------------------------------------------------------------
    def _hold_bucket(self, bucket: int) -> bool:
        if bucket in self._bucket_fds:
            return True
        path = self.bucket_dir / f"{bucket:03d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._bucket_fds[bucket] = fd
        # Whoever held it before may have died with events of this bucket in flight:
        # put them back before claiming anything newer.
        if self._recover(all_dead=False) or self._dead_owner_busy:
            self._invalidate_window()
            self._release_bucket(bucket)
            return False
        return True

    def _release_bucket(self, bucket: int) -> None:
        fd = self._bucket_fds.pop(bucket, None)
        if fd is not None:
            os.close(fd)

    def _release_idle_buckets(self) -> None:
        if not self._others_alive:
            return
        for b in [b for b in self._bucket_fds if self._bucket_load[b] == 0]:
            self._release_bucket(b)

    # -- worker callbacks (any thread) ---------------------------------------------------------------
    def finished(self, job: Job, outcome: str) -> None:
        """Account for a job that left in-flight (and index it unless it went back to pending)."""
        if self.indexer is not None and outcome != Outcome.HANDED_BACK:
            self.indexer.add(job.event, "processed" if outcome == Outcome.PROCESSED else "dead")
        self.done_q.put((job.bucket, outcome))
        if job.record.persisted:
            self.records.drop(job.event.id)

    def retry_scheduled(self, job: Job) -> None:
        self.done_q.put((-1, Outcome.RETRY))

    def hand_back(self, job: Job) -> None:
        """Return a claimed job to pending, keeping what is known about it."""
        if job.record.done or job.record.failures:
            self.records.save(job.event.id, job.record)
        try:
            os.rename(job.path, self.pending_prefix + job.name)
        except FileNotFoundError:
            return
        self.done_q.put((job.bucket, Outcome.HANDED_BACK))

    def file_processed(self, job: Job) -> None:
        """Move a handled job's file to processed/ (through the mover when there is one)."""
        m = self.mover
        if m is None or not m.complete(job.name):
            os.rename(job.path, self.processed_prefix + job.name)

    def sync_processed(self) -> None:
        """fsync the journal and processed/ (the latter by the mover when there is one).

        A filed event needs no fsync to be safe (a lost completion is redelivered
        and its journal skips finished handlers), so with a mover the directory
        sync is asked for every :data:`MOVER_SYNC_EVERY` events here, and by the
        main loop whenever it goes idle.
        """
        with self._processed_dirty:
            self.journal.sync()
            m = self.mover
            if m is not None and m.alive:
                if m.backlog() >= MOVER_SYNC_EVERY:
                    m.sync()  # the child fsyncs processed/ after what it filed
            else:
                fsync_dir(self.layout.processed)

    def worker_failed(self, worker: Worker, exc: BaseException) -> None:
        self.error = exc
        self.stop = True
        self.wake.set()

    def _drain_done(self) -> None:
        c = self.counters
        while True:
            try:
                bucket, outcome = self.done_q.get_nowait()
            except queue.Empty:
                break
            if outcome == Outcome.RETRY:
                c.retries += 1
                continue
            self._inflight -= 1
            self._bucket_load[bucket] -= 1
            if outcome == Outcome.PROCESSED:
                c.processed += 1
            elif outcome == Outcome.DEAD:
                c.dead += 1
            elif outcome == Outcome.EXPIRED:
                c.expired += 1
            elif outcome == Outcome.HANDED_BACK:
                c.handed_back += 1

    def _flush_unhandled(self) -> None:
        """One directory sync for every event completed without handlers since the last one."""
        if self._processed_pending_sync:
            self._processed_pending_sync = False
            self.sync_processed()

    def _check_known(self, event_type: str, path: str) -> None:
        """Validation off: emit still refuses unknown types, and so does the daemon."""
        try:
            self.registry.check_known(event_type, path)
        except InvalidData as exc:
            reason = "unknown_type" if "unknown event type" in exc.message else "bad_schema"
            raise CorruptEvent(reason, exc.message, where=path) from None

    def _recover(self, all_dead: bool) -> int:
        """:meth:`recover`, and say so when it moved anything."""
        moved = self.recover(all_dead)
        if moved:
            log.recovered(moved)
        return moved

    def _reconcile(self, look: bool = False) -> None:
        """Reconcile the index if a dead daemon left its mark (see :mod:`.reconcile`).

        ``look``: also look for daemons that died since the last look (one small
        query; done on each rescan, as other daemons sharing the spool may die).
        """
        r = self.reconciler
        if r is None or not (r.due or look) or self._dead_owner_busy:
            return
        owners = r.ready()
        if owners:
            if self.indexer is not None:
                self.indexer.flush()  # our own rows first: they are not drift
            r.run(owners)

    # -- recovery ------------------------------------------------------------------
    def recover(self, all_dead: bool) -> int:
        """Return the in-flight events of dead owners to pending; the count moved.

        Journals become records so finished handlers are skipped next time.
        Every directory is opened without following links: an owner
        directory (or ``run/owners``) that is a symlink is reported once on
        stderr and left alone, never recovered through.
        """
        moved = 0
        self._dead_owner_busy = False
        # Opened once (no-follow) and listed by descriptor: recovery runs whenever a bucket is taken, so a
        # listing must cost no more than the path lookup it replaces; a directory swapped for a link later
        # cannot redirect it either.
        inflight: SpoolDir | None = self.__dict__.get("_inflight_listing")
        if inflight is None:
            inflight = self.__dict__["_inflight_listing"] = SpoolDir(self.layout, "events/inflight")
        for e in list(inflight.entries()):
            name = e.name
            if name == self.owner or not e.is_dir(follow_symlinks=False):
                if e.is_symlink():
                    self._warn_linked(inflight.path / name)
                continue
            if owner_alive(name, self.heartbeat_dir, self.opts.lease_seconds):
                continue
            lock = self._take_owner_lock(name, wait=5.0 if all_dead else 0.0)
            if lock is None:
                # Its mover is still filing completed events: not ours to take yet.
                self._dead_owner_busy = True
                continue
            try:
                moved += self._recover_owner(inflight, name)
            finally:
                if lock >= 0:
                    locks = open_dir(self.layout, OWNER_LOCKS)
                    if locks is not None:
                        with locks:
                            locks.unlink(f"{name}.lock")
                    os.close(lock)
        if moved:
            with SpoolDir(self.layout, "events/pending") as pending:
                pending.fsync()
            self.counters.recovered += moved
        return moved

    def _warn_linked(self, path: Path) -> None:
        """One stderr line per linked directory met by recovery (rescans would repeat it)."""
        warned: set[Path] = self.__dict__.setdefault("_linked_warned", set())
        if path not in warned:
            warned.add(path)
            log.warning("a symlink or not a directory; not recovered through it (fix it by hand)", path=str(path))

    def _take_owner_lock(self, owner: str, wait: float) -> int | None:
        """Lock a dead owner's lock file: its fd, -1 if it has none, None while still held."""
        try:
            locks = SpoolDir(self.layout, OWNER_LOCKS)
        except FileNotFoundError:
            return -1
        except LinkedDir as exc:
            self._warn_linked(exc.path)
            return None  # cannot tell whether its mover still files: leave its work alone
        with locks:
            try:
                fd = os.open(f"{owner}.lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=locks.fd)
            except OSError:
                return -1  # no lock file (an older daemon): the pid/lease verdict stands
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(0.02)

    def _recover_owner(self, inflight: SpoolDir, owner: str) -> int:
        try:
            d = inflight.child(owner)
        except FileNotFoundError:
            return 0
        except LinkedDir as exc:  # swapped for a link since the listing
            self._warn_linked(exc.path)
            return 0
        moved = 0
        with (
            d,
            SpoolDir(self.layout, "events/pending") as pending,
            SpoolDir(self.layout, "events/processed") as processed,
        ):
            try:
                journal = parse_journal(d.read(JOURNAL, 1 << 30))
            except (FileNotFoundError, CorruptEvent):
                journal = {}  # none, or a link / not a regular file: never read through it
            for name in d.names():
                if name == JOURNAL:
                    continue
                if not name.endswith(".json"):
                    quarantine(
                        self.layout, d.path / name, "bad_name", "unexpected file in an in-flight directory", src=d
                    )
                    continue
                if d.same_file(name, processed, name):
                    d.unlink(name)  # its mover linked it into processed/ and died before the unlink
                    continue
                rec = journal_record(journal, name[:-5], stated_checksum_at(d, name)) if journal else None
                if rec is not None and (rec.done or rec.failures):
                    with SpoolDir(self.layout, "events/records") as records:
                        save_merged(records, name, rec)
                try:
                    d.rename(name, pending, name, replace=True)
                    moved += 1
                except FileNotFoundError:
                    continue
            d.unlink(JOURNAL)
        inflight.rmdir(owner)
        beats = open_dir(self.layout, HEARTBEATS)
        if beats is not None:
            with beats:
                beats.unlink(f"{owner}.json")
        return moved

    # -- heartbeat and health ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        c = self.counters
        now = time.time()
        lag = (now - self._oldest_pending_ms / 1000) if self._oldest_pending_ms else 0.0
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": self.owner.split(".")[0],
            "started_at": c.started,
            "last_beat": now,
            "workers": len(self.workers) or self.opts.workers,
            "handlers": sorted({s.name for s in self.router.subscriptions}),
            "inflight": self._inflight,
            "pending_seen": self._pending_seen,
            "lag_seconds": round(max(0.0, lag), 3),
            "counts": {
                "processed": c.processed,
                "dead": c.dead,
                "expired": c.expired,
                "corrupt": c.corrupt,
                "retries": c.retries,
                "handed_back": c.handed_back,
                "recovered": c.recovered,
                "claimed": c.claimed,
            },
            "once": self.opts.once,
        }

    def _beat(self) -> None:
        write_atomic(self.heartbeat_dir, f"{self.owner}.json", orjson.dumps(self.status()))
        others = 0
        try:
            for e in os.scandir(self.heartbeat_dir):
                if (
                    e.name.endswith(".json")
                    and e.name[:-5] != self.owner
                    and owner_alive(e.name[:-5], self.heartbeat_dir, self.opts.lease_seconds)
                ):
                    others += 1
        except OSError:
            pass
        self._others_alive = others > 0
        self._release_idle_buckets()

    def _emit_health(self) -> None:
        s = self.status()
        try:
            self.router.emit(
                "system.health",
                {
                    "service": f"poetctl.daemon/{self.owner}",
                    "status": "healthy" if self.error is None else "unhealthy",
                    "host": s["host"],
                    "pid": s["pid"],
                    "uptime_seconds": round(time.time() - s["started_at"], 3),
                    "details": {"counts": s["counts"], "lag_seconds": s["lag_seconds"], "inflight": s["inflight"]},
                },
                source="poetctl.daemon",
            )
        except Exception as exc:  # health reporting must never stop processing
            log.warning("cannot emit system.health", error=log.error_text(exc))

    def _check_observer(self) -> None:
        obs = self._observer
        if obs is not None and not obs.is_alive():
            log.warning("file watcher stopped; restarting it and rescanning")
            self._start_observer()
            self._invalidate_window()

    # -- shutdown --------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Workers first (finish the current event, hand back the rest), then the watcher, then files."""
        if self.force:
            os._exit(130)
        for w in self.workers:
            w.stop_requested = True
            w.inbox.put(None)
        if self.inline:
            self.workers[0].close()
        for w in self.workers:
            while w.is_alive():
                if self.force:
                    os._exit(130)
                w.join(0.1)
        if self._observer is not None:
            try:
                self._observer.stop()
            except Exception:
                pass
        self._drain_done()
        if self.mover is not None:
            # Before the safety net below: the mover's queue is handled events, not leftovers.
            self.mover.close()
        # Safety net: anything still claimed by us goes back.
        for e in os.scandir(self.inflight_dir):
            if e.name.endswith(".json"):
                try:
                    os.rename(e.path, self.layout.pending / e.name)
                    self.counters.handed_back += 1
                except FileNotFoundError:
                    pass
        self.sync_processed()
        fsync_dir(self.layout.pending)
        if self.reconciler is not None and self.reconciler.due:
            self._recover(all_dead=False)  # a dead daemon's mover was still filing at start
            self._reconcile()
        self.journal.close()
        if self.indexer is not None:
            self.indexer.close()
        if self.reconciler is not None:
            self.reconciler.finish()  # last: our rows are written, this run ended cleanly
        for p in (self.inflight_dir / JOURNAL, self.heartbeat_dir / f"{self.owner}.json"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.inflight_dir)
        except OSError:
            pass
        for b in list(self._bucket_fds):
            self._release_bucket(b)
        for fd in (self._pending_fd, self._inflight_fd):
            if fd >= 0:
                os.close(fd)
        self._pending_fd = self._inflight_fd = -1
        if self._owner_lock_fd >= 0:
            try:
                os.unlink(self.owner_lock_dir / f"{self.owner}.lock")
            except FileNotFoundError:
                pass
            os.close(self._owner_lock_fd)
            self._owner_lock_fd = -1


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGINT/SIGTERM: first graceful, second immediate. The handler only sets flags."""
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGTERM, daemon.request_stop)


__all__ = ["Daemon", "DaemonOptions", "install_signal_handlers", "partition_key", "process_start_ticks"]
