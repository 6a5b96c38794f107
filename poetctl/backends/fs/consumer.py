"""The filesystem spool's :class:`poetctl.transport.Consumer`: one daemon's claims, journal and mover.

What it owns on disk (see the README's spool layout):

* ``events/inflight/<owner>/`` - the events it leased, and its ``_journal``
  (one line per delivery begun, handler finished, attempt failed; single
  ``write`` calls, fsync'ed by :meth:`FsConsumer.sync`);
* ``run/owners/<owner>.lock`` (held by it and inherited by its mover child),
  ``run/buckets/<nnn>.lock`` (the key buckets it holds),
  ``run/daemons/<owner>.json`` (its heartbeat);
* the index rows of what it finished (:class:`~.index.IndexWriter`).

Claiming is :class:`~.claims.Claims`; recovering dead owners is
:class:`~.recovery.Recovery`. Outcomes may be applied on worker threads:
they touch files, and the bucket loads and the count of leases change under
:attr:`FsConsumer.lock`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ...daemon import log
from ...partition import key_function
from ...transport import Attempt, Delivery, Fetched
from . import shutdown
from .claims import PIPELINE, Claims
from .journal import Journal, RecordStore, dead_letter, quarantine
from .lanes import PriorityLanes
from .layout import fsync_dir
from .owner import current_owner, owner_alive
from .paths import BUCKET_LOCKS, HEARTBEATS, OWNER_LOCKS
from .reconcile import Reconciler
from .recovery import Recovery, lock_owner
from .writer import write_atomic

if TYPE_CHECKING:
    from ...schemas import SchemaRegistry
    from .mover import Mover
    from .transport import FsTransport

MOVER_SYNC_EVERY = 8192  # filed events between directory syncs while busy
JOURNAL_KEEP = 4096  # journal lines kept before an idle moment truncates them (recovery reads them all)
_numbers = itertools.count()  # consumers made in this process: the first is plain <host>.<pid>.<start>


class FsConsumer(PriorityLanes, Claims):
    """One daemon's side of the spool. Options (all keywords; the daemon passes its ``[daemon]`` settings):

    ``registry``/``validate`` (schema checks when reading, as emit does),
    ``key_of`` (partition key), ``window`` (pending names listed at a time),
    ``rescan_interval``, ``heartbeat_interval``, ``lease_seconds`` (by the
    transport's clock), ``watch`` (inotify wake-ups), ``index`` (write index
    rows), ``mover_backlog`` (start the mover child at this many pending; 0 at
    once; negative never), ``status`` (a callable adding the daemon's figures
    to the heartbeat), ``alive`` (is an owner alive; default: its pid and
    start time, or its heartbeat's age for another host), ``clock`` (default:
    the transport's; the daemon passes its own so that one transport serves
    its router and its consumer).
    """

    def __init__(
        self,
        transport: FsTransport,
        name: str | None = None,
        *,
        registry: SchemaRegistry | None = None,
        validate: bool = True,
        key_of: Callable[[Any], str] | None = None,
        window: int = 100_000,
        rescan_interval: float = 5.0,
        heartbeat_interval: float = 2.0,
        lease_seconds: float = 30.0,
        watch: bool = False,
        index: bool = True,
        mover_backlog: int = 1024,
        max_bytes: int | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        alive: Callable[[str], bool] | None = None,
        priority_shares: dict[str, int] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.transport = transport
        self.layout = layout = transport.layout
        self.clock = clock or transport.clock
        n = next(_numbers)
        self.name = self.owner = name or (current_owner() if n == 0 else f"{current_owner()}-{n}")
        self.registry = registry
        self.validate = validate
        self.key_of = key_of or key_function()
        self.window_size = window
        self.rescan_interval = rescan_interval
        self.heartbeat_interval = heartbeat_interval
        self.lease_seconds = lease_seconds
        self.mover_backlog = mover_backlog
        cfg = transport.config
        self.max_bytes = max_bytes or (cfg.max_event_bytes if cfg is not None else 1 << 20)
        self.status_of = status
        self.heartbeat_dir = layout.root / HEARTBEATS
        judge = alive or transport.alive or self._owner_alive
        dead = transport.dead_owners
        self._alive: Callable[[str], bool] = lambda owner: owner not in dead and judge(owner)
        self.inflight_dir = layout.inflight / self.owner
        self.inflight_prefix = f"{self.inflight_dir}/"
        self.processed_prefix = f"{layout.processed}/"
        self.pending_prefix = f"{layout.pending}/"
        self.records = RecordStore(layout)
        self.blocked: set[str] = set()
        self.mover: Mover | None = None
        self.wake = threading.Event()
        self.inflight = 0  # leases not ended (settled on the loop's thread)
        self.handed_back = 0  # by the shutdown safety net (not through release)
        # Bucket loads, bucket locks and the lease count change on the loop's thread (claims) and on
        # worker threads (outcomes): one lock, so a bucket is never let go between a check and a claim.
        self.lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._unsynced = False
        self._loop_acked = False  # acked on the loop's thread (no subscriber): its wait() syncs them
        self._loop_ident = 0
        self._closed = self._dead = False
        self._observer: Any = None
        self._next_scan = self._next_beat = float("-inf")
        self._others_alive = False
        layout.init()
        for d in (self.heartbeat_dir, layout.root / BUCKET_LOCKS, layout.root / OWNER_LOCKS):
            try:
                os.mkdir(d, 0o750)
            except FileExistsError:
                pass
        self._owner_fd = lock_owner(layout, self.owner)
        os.makedirs(self.inflight_dir, 0o750, exist_ok=True)
        # Directory descriptors for the per-event open and claim: one-component lookups.
        self.inflight_fd = os.open(self.inflight_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._init_lanes(priority_shares)
        self._init_claims(layout.root / BUCKET_LOCKS)
        self.journal = Journal(self.inflight_dir)
        self.recovery = Recovery(layout, self.owner, self._alive)
        self.indexer: Any = None
        self.reconciler: Reconciler | None = None
        if index:
            from .index_writer import IndexWriter

            # Written on the loop's thread in batches (maybe_flush): a writer thread would
            # trade the GIL with the loop for every row it binds.
            self.indexer = IndexWriter(layout, threaded=False)
            self.indexer.open()
            self.reconciler = Reconciler(layout, self.owner, self._alive, self.max_bytes)
            self.reconciler.start()
        if watch:
            self._start_observer()
        if mover_backlog == 0:
            self._start_mover()
        self._beat()  # at once: consumers already running see this one and let idle buckets go
        self._next_beat = float("-inf")
        transport._attach(self)

    def _owner_alive(self, owner: str) -> bool:
        return owner_alive(owner, self.heartbeat_dir, self.lease_seconds)

    # -- leasing ------------------------------------------------------------------------------
    def recover(self) -> int:
        """Dead owners' in-flight events back to pending (waiting a moment for their movers)."""
        moved = self.recovery.run(all_dead=True)
        self._reconcile()
        self._beat()
        return moved

    def fetch(self, limit: int) -> Fetched:
        self._loop_ident = threading.get_ident()
        now = self.clock()
        scanned = 0.0  # perf_counter at a periodic rescan (0: none in this call)
        recovered = self.recovery.total  # rescans and bucket takeovers recover too: reported on the Fetched
        self.quarantined = 0
        paid = self.share_due > 0
        if paid:
            self.pay_share()  # the last fetch handed out high events and owes normal work its share
        # Hinted high events and set-aside low ones (priority.py); at least one high when claimed normal
        # events fill the fetch. High ones found: hand them out now, without a rescan, a listing or a
        # claim first; normal work's share of the fetch is claimed by the next one (defer_share).
        high = self.fill_by_priority(max(1, limit - len(self.ready)))
        hurry = high > 0
        self.watch_hints, self.hint_seen = not hurry, False  # a hint arriving during the claims below cuts them short
        woken = self.wake.is_set()
        if woken and not hurry:
            self.wake.clear()
        if not hurry and now >= self._next_scan:
            if self.recovery.run(all_dead=False) or self.recovery.busy or self.exhausted():
                self.invalidate_window()
            else:
                # Nothing recovered: the window stays (a listing of 100,000 names takes seconds on a
                # loaded machine, and a high event arriving meanwhile waited); arrivals are listed after it.
                self.retry_listing = True
            self._reconcile(look=True)
            self._check_observer()
            self._next_scan = now + self.rescan_interval
            scanned = time.perf_counter()
        elif not hurry and (woken or now >= self.due_at):
            if self.exhausted():
                self.invalidate_window()
            else:
                self.retry_listing = True  # arrivals since this window: list again once it is done
        if now >= self._next_beat:
            self._beat()
        if self.outstanding and not hurry:
            self.collect()  # sent by an earlier call: the child renamed it meanwhile
        # Again when a bucket taken over was recovered first (older events are back); not when hurried.
        for _ in range(0 if hurry else 3):
            if self.hint_arrived():
                break  # not another listing or claim batch first
            if self.exhausted() and (self.stale or self.relist or self.retry_listing or not self.listed):
                self.list_window()
            if self.mover is not None and self.mover.alive:
                while len(self.outstanding) < PIPELINE and not self.exhausted() and not self.stale:
                    if self.leased_bytes >= self.lease_bytes_limit:
                        break  # the leases hold enough memory: claim more once some end (_ended wakes us)
                    self.claim_some(limit)
                    if self.hint_seen:
                        break
                if not self.ready and self.outstanding and not self.hint_seen:
                    self.collect()
            elif len(self.ready) < limit and not self.exhausted():
                self.claim_some(limit - len(self.ready))
            if not self.stale or len(self.ready) >= limit:
                break
        if hurry:
            self.defer_share(high, paid)
        if self.hint_seen:
            self.fill_by_priority(limit)  # ahead of what this fetch claimed (see hint_arrived)
        self.watch_hints = False
        ready = self.ready
        n = min(limit, len(ready))
        out = Fetched([ready.popleft() for _ in range(n)], self.quarantined, self.deferred)
        if n:
            self.transport.limits_state.taken(n)  # the pending gauge (backpressure): once per fetch
        full = self.leased_bytes >= self.lease_bytes_limit
        if full:
            self.throttled = True  # "more" waits for room: _ended wakes the loop, no busy fetching meanwhile
        out.more = (
            bool(ready)
            or bool(self.outstanding)
            or self.share_due > 0
            or (not full and (not self.exhausted() or self.stale or self.relist or bool(self.low_names)))
        )
        out.recovered = self.recovery.total - recovered
        if self.indexer is not None:
            self.indexer.maybe_flush()
        if scanned:
            # The interval runs from the end of this call, which listed again (a large backlog takes
            # seconds; timed from its start, a listing slower than the interval made every fetch
            # list the whole backlog again for one batch), and is at least 4x what it took.
            took = time.perf_counter() - scanned
            self._next_scan = max(self._next_scan, self.clock() + max(self.rescan_interval, 4 * took))
        return out

    def list_window(self) -> None:
        super().list_window()
        self.transport.limits_state.counted(self.pending_seen)  # the pending gauge is exact again

    # -- recording (worker threads) ---------------------------------------------------------
    def begin(self, delivery: Delivery) -> None:
        rec = delivery.record
        rec.deliveries += 1
        self.journal.began(delivery.event.id, rec.deliveries, delivery.event.checksum)

    def done(self, delivery: Delivery, handler: str) -> None:
        delivery.record.done.add(handler)
        self.journal.done(delivery.event.id, handler, delivery.event.checksum)

    def fail(self, delivery: Delivery, attempt: Attempt, not_before: float) -> None:
        rec = delivery.record
        rec.failures.append(attempt)
        rec.not_before = not_before
        self.journal.failed(delivery.event.id, attempt, not_before, delivery.event.checksum)
        self.blocked.add(delivery.key)
        h = delivery.handle
        if h.size:
            # Parked for a retry: no longer counted against lease_bytes_limit, so failing large events
            # never hold back other keys' events (max_inflight still bounds them, as before).
            with self.lock:
                self.leased_bytes -= h.size
                h.size = 0

    # -- outcomes (worker threads) ------------------------------------------------------------
    def ack(self, delivery: Delivery) -> None:
        h = delivery.handle
        m = self.mover
        if m is None or not m.complete(h.name):
            try:
                os.rename(self.inflight_prefix + h.name, self.processed_prefix + h.name)
            except FileNotFoundError:
                return  # the lease was lost (recovered by another consumer)
            self._unsynced = True
            if threading.get_ident() == self._loop_ident:
                self._loop_acked = True
        self._ended(delivery, "processed")

    def dead(self, delivery: Delivery, reason: str, info: dict[str, Any]) -> None:
        h = delivery.handle
        dead_letter(self.layout, self.inflight_prefix + h.name, delivery.id, info)
        self._ended(delivery, "dead")

    def quarantine(self, delivery: Delivery, reason: str, detail: str) -> None:
        h = delivery.handle
        if quarantine(self.layout, Path(self.inflight_prefix + h.name), reason, detail) is not None:
            log.quarantined(self.inflight_prefix + h.name, reason, detail)
        self._ended(delivery, None)

    def _ended(self, d: Delivery, state: str | None) -> None:
        h = d.handle
        if state is not None and self.indexer is not None:
            self.indexer.add(d.event, state)
        if h.persisted:
            self.records.drop(d.id)
        if self.blocked and d.key in self.blocked:
            self.blocked.discard(d.key)
            self.retry_listing = True  # its later events were skipped by the window: list again
        with self.lock:
            self.inflight -= 1
            self.bucket_load[h.bucket] -= 1
            self.leased_bytes -= h.size
            if self._others_alive and not self.bucket_load[h.bucket]:
                self.release_bucket(h.bucket)  # another daemon may be waiting for its keys
        if self.throttled and self.leased_bytes <= self.lease_bytes_limit // 2:
            self.throttled = False
            self.wake.set()  # the loop stopped claiming at the byte limit: room again

    def _unload(self, bucket: int, let_go: bool = False, size: int = 0) -> None:
        with self.lock:
            self.inflight -= 1
            self.bucket_load[bucket] -= 1
            self.leased_bytes -= size
            if (let_go or self._others_alive) and not self.bucket_load[bucket]:
                self.release_bucket(bucket)  # another daemon may be waiting for its keys

    def release(self, deliveries: Sequence[Delivery]) -> None:
        moved = False
        for d in deliveries:
            h = d.handle
            rec = d.record
            if rec.done or rec.failures or rec.deliveries:
                self.records.save(d.id, rec)
            try:
                os.rename(self.inflight_prefix + h.name, self.pending_prefix + h.name)
                moved = True
            except FileNotFoundError:
                pass
            self.blocked.discard(d.key)
            self._unload(h.bucket, let_go=True, size=h.size)  # handed back: whoever claims it next needs the bucket
        if moved:
            fsync_dir(self.layout.pending)
            self.transport._wake_all()

    def sync(self) -> None:
        """fsync the journal and processed/ (the latter by the mover when there is one).

        A filed event needs no fsync to be safe (a lost completion is redelivered
        and its journal skips finished handlers), so with a mover the directory
        sync is asked for every :data:`MOVER_SYNC_EVERY` events, and when idle (:meth:`wait`).
        """
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        self.journal.sync()
        m = self.mover
        if m is not None and m.alive:
            if m.backlog() >= MOVER_SYNC_EVERY:
                m.sync()  # the child fsyncs processed/ after what it filed
        elif self._unsynced:
            self._unsynced = False  # before the fsync: an ack made during it asks for the next one
            fsync_dir(self.layout.processed)

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        """Idle: flush the index, settle the mover and the journal, beat; then wait for a wake-up."""
        timeout = min(timeout, max(0.0, self._next_scan - self.clock()))
        if self.indexer is not None:
            self.indexer.maybe_flush()
            if self.indexer.pending():
                timeout = min(timeout, self.indexer.interval)
        m = self.mover
        if m is not None and m.backlog():
            m.poll()
            m.sync()  # idle: make what it filed durable (a no-op if already asked)
        # Events acked on this thread (no subscriber) need a sync; workers sync their own when they
        # go idle. Never wait for a worker's sync here: the loop must stay free for wake-ups.
        if self._loop_acked and self._sync_lock.acquire(blocking=False):
            self._loop_acked = False
            try:
                self._sync()
            finally:
                self._sync_lock.release()
        if self.inflight == 0 and self.journal.lines >= JOURNAL_KEEP and (m is None or m.settled()):
            # Nothing in flight and every completion filed: history. Not after every event: each
            # delivery writes a line, and a truncate is a journaled metadata change on the disk.
            self.journal.truncate()
        if self.clock() >= self._next_beat:
            self._beat()
        self.wake.wait(timeout)

    def interrupt(self) -> None:
        self.wake.set()

    # -- heartbeat, index, watcher -----------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        """This consumer's part of the heartbeat (the daemon's ``status`` adds its own)."""
        now = self.clock()
        lag = (now - self.oldest_pending_ms / 1000) if self.oldest_pending_ms else 0.0
        doc = {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": self.owner.split(".")[0],
            "last_beat": now,
            "inflight": self.inflight,
            "pending_seen": self.pending_seen,
            "lag_seconds": round(max(0.0, lag), 3),
        }
        if self.status_of is not None:
            doc.update(self.status_of())
        return doc

    def _beat(self) -> None:
        self._next_beat = self.clock() + self.heartbeat_interval
        write_atomic(self.heartbeat_dir, f"{self.owner}.json", orjson.dumps(self.heartbeat()))
        others = 0
        try:
            for e in os.scandir(self.heartbeat_dir):
                n = e.name
                if n.endswith(".json") and n[:-5] != self.owner and self._alive(n[:-5]):
                    others += 1
        except OSError:
            pass
        self._others_alive = others > 0
        if self._others_alive:
            with self.lock:
                self.release_idle_buckets()

    def _reconcile(self, look: bool = False) -> None:
        """Reconcile the index if a dead daemon left its mark (see :mod:`.reconcile`)."""
        r = self.reconciler
        if r is None or not (r.due or look) or self.recovery.busy:
            return
        owners = r.ready()
        if owners:
            if self.indexer is not None:
                self.indexer.flush()  # our own rows first: they are not drift
            r.run(owners)

    def _start_observer(self) -> None:
        from .watcher import start_watcher

        self._observer = start_watcher(str(self.layout.pending), self.wake)

    def _check_observer(self) -> None:
        obs = self._observer
        if obs is not None and not obs.is_alive():
            log.warning("file watcher stopped; restarting it and rescanning")
            self._start_observer()

    def _start_mover(self) -> None:
        from .mover import Mover

        try:
            self.mover = Mover(
                self.inflight_dir, self.layout.processed, pass_fds=(self._owner_fd,), pending_dir=self.layout.pending
            )
        except OSError as exc:
            log.warning("cannot start the completion mover; filing events here", error=exc.strerror or str(exc))
            self.mover_backlog = -1

    # -- shutdown (shutdown.py) ---------------------------------------------------------------
    def close(self) -> None:
        """Hand back what is left, file what is done, sync, remove this owner's files and locks."""
        shutdown.close(self)

    def _close_fds(self) -> None:
        self.close_claims()
        self.close_lanes()
        self.recovery.close()
        if self.inflight_fd >= 0:
            os.close(self.inflight_fd)
            self.inflight_fd = -1

    def _simulate_death(self) -> None:
        """Test hook: this process died (see :func:`.shutdown.simulate_death`)."""
        shutdown.simulate_death(self)


__all__ = ["MOVER_SYNC_EVERY", "FsConsumer"]
