"""The claim side of the fs consumer: the pending window, read+verify, bucket locks, the claim itself.

One thread (the loop's) owns ``events/pending``: it lists it into a bounded,
ordered window (:mod:`.listing`; the watcher only wakes it, the listing is
the truth), reads and verifies each candidate through a directory descriptor,
quarantines what cannot be trusted and claims the rest by renaming it into
``events/inflight/<owner>/`` - inline, or through the mover child, pipelined
across :meth:`Claims._claim_batch` calls (the child renames batch k+1 while
the loop handles batch k).

Per-key order across daemons sharing a spool: a key hashes to one of
:data:`BUCKETS` lock files under ``run/buckets``; a consumer claims an event
only while it holds the bucket's flock and keeps it while it has unfinished
events of the bucket. A dead consumer's locks die with it; its in-flight
events go back to pending (recovery) before anyone claims from that bucket.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...daemon import log
from ...errors import InvalidData, SpoolIOError
from ...event import Event
from ...ids import time_of
from ...transport import Delivery, Record
from .journal import RecordStore, quarantine
from .layout import FILE_MODE, SpoolLayout
from .listing import Interrupted, list_window
from .reader import FIRST_READ, READ_FLAGS, CorruptEvent, UnreadableEvent, decode_event, read_bytes

if TYPE_CHECKING:
    from ...schemas import SchemaRegistry
    from .mover import Mover
    from .recovery import Recovery

BUCKETS = 256
PIPELINE = 2  # claim batches the mover child works on ahead of the loop
# File bytes of the events leased and not yet ended that stop further claims. A decoded event holds
# ~2.5x its file in memory (a 15 KiB event ~40 KB), so 4,096 leases of large events would be
# ~160 MB; this keeps them to ~10 MB (bench/memory.py --large: peak 51 MB, 83 MB without it; 8 MiB
# gave 63 MB and drained no faster). Small events (~1 KiB) never reach it before max_inflight.
LEASE_BYTES = 4 << 20


class Handle:
    """The fs side of a :class:`~poetctl.transport.Delivery`: file name, key bucket, record file exists."""

    __slots__ = ("bucket", "name", "persisted", "size")

    def __init__(self, name: str, bucket: int, persisted: bool, size: int = 0) -> None:
        self.name = name
        self.bucket = bucket
        self.persisted = persisted
        self.size = size  # file bytes, counted in leased_bytes until the lease ends


class Claims:
    """Window, preparation and bucket locks of one consumer (the base of :class:`~.consumer.FsConsumer`)."""

    layout: SpoolLayout
    clock: Callable[[], float]
    recovery: Recovery
    records: RecordStore
    mover: Mover | None
    key_of: Callable[[Event], str]
    registry: SchemaRegistry | None
    validate: bool
    max_bytes: int
    window_size: int
    mover_backlog: int
    blocked: set[str]
    inflight_prefix: str
    inflight: int
    lock: threading.Lock

    def _init_claims(self, bucket_dir: Path) -> None:
        self.bucket_dir = bucket_dir
        self.bucket_fds: dict[int, int] = {}
        self.bucket_load = [0] * BUCKETS
        self.window: list[str] = []
        self.window_pos = 0
        self.listed = False
        self.stale = False
        self.skipped: set[str] = set()
        self.unconfirmed: set[str] = set()
        self.deferred = 0
        self.relist = False
        self.retry_listing = False  # a bucket was held by another: list again at the next fetch
        self.due_at = float("inf")  # the earliest retry time the window skipped
        self.pending_records: dict[str, Record] = {}
        self.pending_seen = 0
        self.oldest_pending_ms: int | None = None
        self.unreadable: set[str] = set()
        self.quarantined = 0
        self.ready: deque[Delivery] = deque()  # claimed, not yet handed out
        # Claim batches at the mover, oldest first: up to PIPELINE, so the child always has renames
        # queued while the loop handles what was collected (and is not woken per completion).
        self.outstanding: deque[tuple[int, list[Delivery]]] = deque()
        self.reserved = 0  # prepared, claim not answered yet (counted in bucket loads)
        self.leased_bytes = 0  # file bytes of leases not ended (changed under self.lock)
        self.lease_bytes_limit = LEASE_BYTES
        self.throttled = False  # a fetch stopped at lease_bytes_limit: wake the loop when room is back
        self.pending_fd = -1
        self.open_pending()

    def open_pending(self) -> None:
        """(Re)open ``events/pending``; at start and whenever the directory was replaced."""
        fd = os.open(self.layout.pending, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if self.pending_fd >= 0:
            os.close(self.pending_fd)
        self.pending_fd = fd

    def _start_mover(self) -> None:  # the consumer's
        raise NotImplementedError

    # -- the window -------------------------------------------------------------------------
    def invalidate_window(self) -> None:
        """Forget the window: the next fetch lists again (rescan, recovery, a wake-up)."""
        self.window = []
        self.window_pos = 0
        self.stale = True

    def exhausted(self) -> bool:
        return self.window_pos >= len(self.window)

    def list_window(self) -> None:
        """List pending and keep the ``window`` oldest names (bounded memory at any backlog)."""
        pending = self.layout.pending
        try:
            a, b = os.fstat(self.pending_fd), os.stat(pending)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                self.open_pending()
        except OSError as exc:
            raise SpoolIOError(f"cannot open {pending}: {exc.strerror}") from None
        # Let the spent window go first: at a large backlog it is ~10 MB of names held through the listing.
        self.window = []
        self.window_pos = 0
        try:
            listed = list_window(pending, self.pending_fd, self.window_size, self.listing_interrupt())
        except Interrupted:  # a high event was hinted meanwhile (priority.py): it goes first, list later
            self.invalidate_window()
            return
        self.window = listed.names
        self.unconfirmed = listed.unconfirmed
        oldest: int | None = None
        if self.window:
            first = self.window[0]
            oldest = time_of(first[:-5]) if first.endswith(".json") else None
            if oldest is None:
                try:
                    oldest = os.stat(pending / first, follow_symlinks=False).st_mtime_ns // 1_000_000
                except OSError:
                    oldest = None
        self.window_pos = 0
        self.stale = False
        self.skipped = set()
        self.reset_lanes()
        # More names than the window kept: list again once it is done (not at the next rescan or wake-up).
        self.relist = listed.count > len(listed.names)
        self.deferred = 0
        self.pending_seen = listed.count
        self.oldest_pending_ms = oldest
        self.pending_records = self.records.load_all() if listed.count else {}
        if self.mover is None and 0 < self.mover_backlog <= listed.count:
            self._start_mover()
        self.listed = True

    # -- claiming ---------------------------------------------------------------------------
    def claim_some(self, limit: int) -> None:
        """Prepare up to ``limit`` events of the window and claim them into :attr:`ready`.

        Inline, each is renamed as it is read. With the mover, the batch goes
        to the child and joins :attr:`outstanding` (see :meth:`collect`).
        """
        mover = self.mover if self.mover is not None and self.mover.alive else None
        pending = f"{self.layout.pending}/"
        window = self.window
        pos = self.window_pos
        batch: list[Delivery] = []
        try:
            while pos < len(window) and len(batch) < limit and self.leased_bytes < self.lease_bytes_limit:
                if not pos & 31 and self.hint_arrived():
                    break  # a high event was hinted: hand out what is claimed, then it (priority.py)
                name = window[pos]
                pos += 1
                d = self._prepare(pending + name, name, claim=mover is None)
                if self.window is not window:
                    break  # recovery put older events back: list again before claiming more
                if d is not None:
                    batch.append(d)
        finally:
            if self.window is window:
                self.window_pos = pos
        if mover is None:
            self.ready.extend(batch)
        elif batch:
            self.reserved += len(batch)
            self.outstanding.append((mover.claim([d.handle.name for d in batch]), batch))

    def collect(self) -> None:
        """Take in the mover's answers for the oldest outstanding batch: claimed ones become ready."""
        if not self.outstanding:
            return
        token, batch = self.outstanding.popleft()
        self.reserved -= len(batch)
        assert self.mover is not None
        results = self.mover.claim_result(token)
        records = self.pending_records
        ready = self.ready
        for d, ok in zip(batch, results, strict=True):
            if ok == 49:  # b"1"
                if records:
                    self._claimed(d)
                ready.append(d)
            else:
                self._unclaimed(d.handle.bucket, d.handle.size)

    def _unclaimed(self, bucket: int, size: int) -> None:
        with self.lock:
            self.bucket_load[bucket] -= 1
            self.inflight -= 1
            self.leased_bytes -= size

    def _claimed(self, d: Delivery) -> None:
        record = self.pending_records.pop(d.id, None)
        if record is not None:
            d.handle.persisted = True

    def _prepare(self, path: str, name: str, claim: bool) -> Delivery | None:
        """Read, verify and (``claim``) claim one pending file; None if skipped, taken or quarantined."""
        if name.startswith("."):
            return None  # hidden files (.gitkeep, editors' swap files) are not events and not ours
        try:
            if not name.endswith(".json"):
                raise CorruptEvent("bad_name", "expected <event id>.json", where=path)
            # The common case inline (open, one read, close); anything unusual - an
            # error, an empty or large file - is re-read by read_bytes, which classifies it.
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=self.pending_fd)
                try:
                    data = os.read(fd, FIRST_READ)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                raise
            except OSError:
                data = b""
            if not data or len(data) >= FIRST_READ or len(data) > self.max_bytes:
                data = read_bytes(name, self.max_bytes, dir_fd=self.pending_fd, where=path)
            size = len(data)
            ev = decode_event(data, self.registry, where=path, expected_id=name[:-5], validate_payload=self.validate)
            if not self.validate and self.registry is not None:
                self._check_known(ev.type, path)
        except FileNotFoundError:
            return None
        except UnreadableEvent as exc:
            # Not the file's fault (permissions, too many open files): leave it, say so once.
            self.deferred += 1
            if name not in self.unreadable:
                if len(self.unreadable) >= 100_000:
                    self.unreadable.clear()
                self.unreadable.add(name)
                log.unreadable(path, exc.detail)
            return None
        except CorruptEvent as exc:
            if quarantine(self.layout, Path(path), exc.reason, exc.detail) is not None:
                self.quarantined += 1
                log.quarantined(path, exc.reason, exc.detail)
            return None
        key = self.key_of(ev)
        if self.unconfirmed and name in self.unconfirmed:
            # Only the second listing showed it: an earlier event of its key may still be
            # unlisted (see listing.py). The key waits for the next listing, asked for now.
            self.skipped.add(key)
            self.relist = True
            return None
        if key in self.skipped or key in self.blocked or key in self.low_held:
            self.skipped.add(key)
            return None
        if ev.priority == "low" and not self.serving_low:
            self.set_aside_low(name, key)  # priority.py: claimed within the low share, its key's later events behind it
            return None
        record = self.pending_records.get(ev.id)
        if record is not None and record.not_before > self.clock():
            self.skipped.add(key)
            self.deferred += 1
            self.due_at = min(self.due_at, record.not_before)  # list again then
            return None
        bucket = zlib.crc32(key.encode()) % BUCKETS
        with self.lock:  # held from the check to the load: an outcome cannot let the bucket go between
            if bucket not in self.bucket_fds and not self._hold_bucket(bucket):
                self.skipped.add(key)
                self.deferred += 1  # another daemon holds it, or a dead one's mover still files: later
                self.retry_listing = True
                return None
            self.bucket_load[bucket] += 1
            self.inflight += 1
            self.leased_bytes += size
        if claim:
            try:
                os.rename(name, name, src_dir_fd=self.pending_fd, dst_dir_fd=self.inflight_fd)
            except FileNotFoundError:
                self._unclaimed(bucket, size)
                return None
        d = Delivery(ev, key, record or Record(), Handle(name, bucket, False, size))
        if claim and record is not None:
            self._claimed(d)
        return d

    inflight_fd: int
    low_held: set[str]
    serving_low: bool

    if TYPE_CHECKING:  # PriorityLanes' (the other base of FsConsumer, lanes.py)

        def set_aside_low(self, name: str, key: str) -> None: ...

        def reset_lanes(self) -> None: ...

        def hint_arrived(self) -> bool: ...

        def listing_interrupt(self) -> Callable[[], bool] | None: ...

    def _check_known(self, event_type: str, path: str) -> None:
        """Validation off: emit still refuses unknown types, and so does the daemon."""
        assert self.registry is not None
        try:
            self.registry.check_known(event_type, path)
        except InvalidData as exc:
            reason = "unknown_type" if "unknown event type" in exc.message else "bad_schema"
            raise CorruptEvent(reason, exc.message, where=path) from None

    # -- buckets ----------------------------------------------------------------------------
    def _hold_bucket(self, bucket: int) -> bool:
        path = self.bucket_dir / f"{bucket:03d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.bucket_fds[bucket] = fd
        # Whoever held it before may have died with events of this bucket in flight:
        # put them back before claiming anything newer.
        if self.recovery.run(all_dead=False) or self.recovery.busy:
            self.invalidate_window()
            self.release_bucket(bucket)
            return False
        return True

    def release_bucket(self, bucket: int) -> None:
        fd = self.bucket_fds.pop(bucket, None)
        if fd is not None:
            os.close(fd)

    def release_idle_buckets(self) -> None:
        for b in [b for b in self.bucket_fds if self.bucket_load[b] == 0]:
            self.release_bucket(b)

    def close_claims(self) -> None:
        """Let go of every bucket lock and the pending descriptor."""
        for b in list(self.bucket_fds):
            self.release_bucket(b)
        if self.pending_fd >= 0:
            os.close(self.pending_fd)
            self.pending_fd = -1


__all__ = ["BUCKETS", "Claims", "Handle"]
