"""Priority delivery on the spool: the key ledger, the high lane's hints, the consumer's lanes.

Names in ``events/pending`` stay ``<id>.json`` whatever the priority (every
tool reads them as before). What lets a daemon find a high event among
100,000 pending ones without listing or reading them is a *hint*: an empty
file ``run/priority/<id>`` created after the event is committed. The
directory holds only the high events not yet claimed, so the daemon lists it
on every fetch for a few microseconds.

Priority must never reorder a partition key's events, and the daemon cannot
know the keys of events it has not read. So the **emitter** decides whether
a high event may take the fast lane, from the *key ledger* ``run/keyledger``
(2.6 MB, written through ``mmap``: no system call per event; one flock per
publish): :data:`BUCKETS` buckets of :data:`WAYS` keys, each key with two
ids - its event noted last and its event that sorts last (ids sort by time;
the daemon claims a key's events in that order). Every publish notes its
events there. A high event of key K takes the fast lane only if

* K is in the ledger and both its ids are *finished* - found neither in
  ``pending/`` nor in any ``inflight/<owner>/``, looked up pending,
  inflight, pending again so that one move between the looks cannot hide
  it. Any earlier event of K was claimed before those two, or was being
  emitted at the same moment as this one (no order exists between those); or
* K is not in the ledger, the ledger is *complete* (created on a spool with
  nothing pending or in flight) and K's bucket never had to evict a key
  with unfinished events (a full bucket evicts a settled key first: that
  loses nothing, since a settled key is as good as a new one).

Otherwise the event waits its turn in id order like a normal one (it is still
marked high; only the jump is refused). With up to a few thousand keys
unfinished at once a new key almost always finds room; with far more (say
100,000 distinct keys pending) many buckets are full and unsettled, and high
events of new keys in those buckets wait their turn.

Limits (documented): events written into ``pending/`` by hand, by ``restore``
or by ``dead retry`` are not in the ledger, so a high event may pass them;
after a power loss the ledger may lack the last writes before the crash.

Low events are found as the claim walk reads them: the walk sets them aside
(their key waits, so later events of the key stay behind them) and
:meth:`PriorityLanes.claim_low` claims them within the low share.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...priority import HIGH, split
from .claims import PIPELINE
from .layout import FILE_MODE, SpoolLayout
from .runfile import locked, open_run_file

if TYPE_CHECKING:
    from collections import deque

    from ...transport import Delivery, Outgoing
    from .mover import Mover

LEDGER = "run/keyledger"
HINTS = "run/priority"
BUCKETS = 16384
WAYS = 4
# A bucket holds up to 4 keys: 8 bytes key hash, then two ids as 16 bytes each (the key's event
# noted last, and its event that sorts last); the key is settled when both are finished (see
# note()). An id that is not a lowercase UUID (fresh and derived ids are) is noted as _UNKNOWN:
# that key never jumps again. After the buckets come BUCKETS "lossy" bytes: 1 once an unsettled
# key had to be evicted from the bucket (a key missing from it is then unknown, not fresh).
SLOT = 40
_BUCKET = WAYS * SLOT
_HEAD = 64  # b"poetctl-keyledger 3\n", then the completeness byte at offset 32
_MAGIC = b"poetctl-keyledger 3\n"
_COMPLETE = 32
_EMPTY = b"\0" * 8
_UNKNOWN = b"\xff" * 16  # an id that could not be noted (sorts after every UUID)
_LOSSY = 64 + BUCKETS * _BUCKET
_SIZE = _LOSSY + BUCKETS
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _pack(eid: str) -> bytes | None:
    return bytes.fromhex(eid.replace("-", "")) if _UUID.fullmatch(eid) else None


def _unpack(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def key_hash(key: str) -> bytes:
    """8 bytes identifying a partition key across processes (never 0: 0 marks an empty slot)."""
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return h if h != _EMPTY else b"\1" + h[1:]


class KeyLedger:
    """The spool's key ledger (see the module docstring). One per transport; opened on first use."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout
        self.path = layout.root / LEDGER
        self.fd = -1
        self.map: mmap.mmap | None = None
        # flock excludes other processes only: threads of one process share the open file, so
        # they also take this lock (and it makes opening the ledger once per transport safe).
        self._mutex = threading.RLock()

    def _open(self) -> mmap.mmap:
        if self.map is not None:
            return self.map
        size = _SIZE
        fd, created = open_run_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != size or os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                    # New, damaged or another version: start over (complete only on an idle spool).
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                    head = _MAGIC + b"\0" * (_HEAD - len(_MAGIC))
                    if created and self._spool_idle():
                        head = head[:_COMPLETE] + b"\1" + head[_COMPLETE + 1 :]
                    os.pwrite(fd, head, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self.map

    def _spool_idle(self) -> bool:
        """Nothing pending and nothing in flight: a ledger made now knows every key there is."""
        if any(not n.startswith(".") for n in _names(self.layout.pending)):
            return False
        return not any(
            any(n.endswith(".json") for n in _names(d)) for d in self.layout.inflight_dirs() if not d.is_symlink()
        )

    def note(self, items: Sequence[Outgoing], key_of: Callable[[Any], str]) -> set[str]:
        """Record ``items`` as their keys' newest events; return the ids of high ones that may take the fast lane.

        The ledger never stops an emit: if it cannot be opened or written
        (a full disk, a read-only ``run/``, a link where ``run/`` should be),
        nothing takes the fast lane and the events are committed as usual.
        """
        with self._mutex:
            try:
                m = self._open()
            except OSError:
                return set()
            return self._note(m, self.fd, items, key_of)

    def _note(self, m: mmap.mmap, fd: int, items: Sequence[Outgoing], key_of: Callable[[Any], str]) -> set[str]:
        fast: set[str] = set()
        noted: set[bytes] = set()
        hashes: dict[str, bytes] = {}  # a group's events mostly share a few keys: hash each once
        with locked(self._mutex, fd):
            complete = m[_COMPLETE] == 1
            # A high event of key K jumps only if K's slot holds K and both its noted-last and its
            # sorts-last event are finished: any earlier event of K was claimed before either of them,
            # or was still being emitted concurrently with this one (no order between those).
            for it in items:
                ev = it.event
                key = key_of(ev)
                h = hashes.get(key) or hashes.setdefault(key, key_hash(key))
                b = int.from_bytes(h, "little") % BUCKETS
                base = _HEAD + b * _BUCKET
                off = free = -1
                for o in range(base, base + _BUCKET, SLOT):
                    sh = m[o : o + 8]
                    if sh == h:
                        off = o
                        break
                    if free < 0 and sh == _EMPTY:
                        free = o
                last = top = _EMPTY
                if off >= 0:
                    last, top = m[off + 8 : off + 24], m[off + 24 : off + 40]
                if ev.priority == HIGH and (
                    self.settled(last, top, noted) if off >= 0 else complete and not m[_LOSSY + b]
                ):
                    fast.add(ev.id)
                eid = _pack(ev.id) or _UNKNOWN
                noted.add(eid)  # not committed yet: a later event of this group must not pass it
                if off < 0:
                    off = free if free >= 0 else self._evict(m, base, b, h, noted)
                    top = eid
                # The key's event that sorts last stays so (an unknown id sorts last for good).
                m[off : off + 40] = h + eid + max(top, eid)
        return fast

    def settled(self, last: bytes, top: bytes, noted: set[bytes]) -> bool:
        """Are both noted events of a key finished (and not of the group being noted)?"""
        if _UNKNOWN in (last, top) or last in noted or top in noted:
            return False
        return self.finished(_unpack(last)) and (top == last or self.finished(_unpack(top)))

    def _evict(self, m: mmap.mmap, base: int, b: int, h: bytes, noted: set[bytes]) -> int:
        """A way of a full bucket for a new key: a settled key's (nothing lost), else one marked lossy."""
        for o in range(base, base + _BUCKET, SLOT):
            if self.settled(m[o + 8 : o + 24], m[o + 24 : o + 40], noted):
                return o
        m[_LOSSY + b] = 1
        return base + (h[0] % WAYS) * SLOT

    def finished(self, event_id: str) -> bool:
        """Is ``event_id`` neither pending nor in flight (pending, inflight, pending again)?"""
        name = f"{event_id}.json"
        pending = self.layout.pending
        if _exists(pending, name):
            return False
        for d in self.layout.inflight_dirs():
            if _exists(d, name):
                return False
        return not _exists(pending, name)

    def close(self) -> None:
        with self._mutex:  # a note() running now keeps its fd and map until it is done
            if self.map is not None:
                self.map.close()
                self.map = None
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _names(directory: os.PathLike[str] | str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _exists(directory: os.PathLike[str] | str, name: str) -> bool:
    try:
        os.stat(os.path.join(directory, name), follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume it is there (no fast lane)


def write_hints(layout: SpoolLayout, ids: Sequence[str]) -> None:
    """Hint the daemons at committed fast-lane events (empty files; a lost hint only costs the jump)."""
    d = layout.root / HINTS
    try:
        try:
            os.mkdir(d, 0o750)
        except FileExistsError:
            pass
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for eid in ids:
            try:
                os.close(
                    os.open(
                        eid, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dfd
                    )
                )
            except OSError:
                pass
    finally:
        os.close(dfd)


class PriorityLanes:
    """The consumer's side: claim hinted high events and set-aside low ones within their shares.

    A mixin of :class:`~.consumer.FsConsumer` (uses its claim machinery).
    """

    layout: SpoolLayout
    ready: Any
    shares: dict[str, int]
    hints_fd: int
    low_names: dict[str, str]
    low_held: set[str]
    skipped: set[str]
    unconfirmed: set[str]
    relist: bool

    if TYPE_CHECKING:  # Claims' (the other base of FsConsumer)

        def _prepare(self, path: str, name: str, claim: bool) -> Delivery | None: ...

        def exhausted(self) -> bool: ...

        def claim_some(self, limit: int) -> None: ...

        def collect(self) -> None: ...

        mover: Mover | None
        outstanding: deque[tuple[int, list[Delivery]]]
        stale: bool
        retry_listing: bool
        listed: bool
        wake: threading.Event

        def list_window(self) -> None: ...

    def _init_lanes(self, shares: dict[str, int] | None) -> None:
        from ...priority import DEFAULT_SHARES

        self.shares = shares or DEFAULT_SHARES
        self.low_names = {}  # name -> key, in the order the walk found them
        self.low_held = set()  # keys whose earliest event is a set-aside low one
        self.serving_low = False
        self.normal_share = 0  # normal events the last fill left room for (claim_share)
        self.share_waited = False  # a fetch with high events skipped a listing: the next one lists
        self.listing_cut = False  # the last listing was cut short for a hint: the next one is not
        # A fetch that found no hint at its start watches for one while it claims normal events
        # (hint_arrived): one that arrives mid-fetch goes out with that fetch, not the next one.
        self.watch_hints = False
        self.hint_seen = False
        self.stuck_hints: set[str] = set()  # hinted events the last fill could not claim yet
        d = self.layout.root / HINTS
        try:
            os.mkdir(d, 0o750)
        except FileExistsError:
            pass
        self.hints_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def fill_by_priority(self, limit: int) -> int:
        """Claim hinted high events and due low ones into :attr:`ready`, within their shares; how many high."""
        hints = os.listdir(self.hints_fd)
        if not hints and not self.low_names:
            return 0
        # Normal events may wait unless a listing found the window's last ones and nothing arrived since.
        normal = limit if not self.exhausted() or self._needs_listing() else 0
        quota = split(limit, {"high": len(hints), "normal": normal, "low": len(self.low_names)}, self.shares)
        # Normal work's own share beside high events (not what they leave over: claim_share claims it
        # before a lone high event goes out), as if normal events waited (the window may need a listing).
        sh = self.shares
        live = sh["high"] + sh["normal"] + (sh["low"] if self.low_names else 0)
        self.normal_share = max(1, limit * sh["normal"] // live)
        got = 0
        self.stuck_hints = set()
        if hints:
            hints.sort()
            pending = f"{self.layout.pending}/"
            high: list[Delivery] = []
            for eid in hints[: quota["high"]]:
                name = f"{eid}.json"
                # The emitter proved nothing earlier of its key is pending: a listing that raced its
                # commit (unconfirmed, see listing.py) is no reason to wait.
                self.unconfirmed.discard(name)
                d = self._prepare(pending + name, name, claim=True)
                if d is not None:
                    high.append(d)
                elif _exists(self.layout.pending, name):
                    self.stuck_hints.add(eid)  # hint_arrived() ignores it until a fill is tried again
                    continue  # not claimable yet (its bucket is another daemon's, unreadable...): try again next fetch
                try:
                    os.unlink(eid, dir_fd=self.hints_fd)
                except FileNotFoundError:
                    pass
            self.ready.extendleft(reversed(high))  # ahead of normal events claimed before
            got = len(high)
        if quota["low"]:
            self.claim_low(quota["low"])
        return got

    def claim_share(self) -> None:
        """Beside high events: claim normal work's share of the fetch (the last fill's quota), no listing.

        Under a stream of high events every fetch still takes normal events
        (``priority_shares``), and a lone high event waits for one small claim
        at most, not for a listing or a full claim batch.
        """
        n = self.normal_share
        if n <= 0:
            return
        if self.exhausted() and self._needs_listing():
            # A listing takes a while (100,000 names: tens of ms): not before a lone high event goes
            # out, but in the next fetch that has high events too, so normal work is never starved.
            if not self.share_waited:
                self.share_waited = True
                return
            self.wake.clear()
            self.list_window()
        self.share_waited = False
        mover = self.mover
        if mover is not None and mover.alive:
            if self.outstanding and mover.claim_answered(self.outstanding[0][0]):
                self.collect()  # sent by an earlier fetch; not waited for (a loaded child lags)
            if len(self.outstanding) < PIPELINE and not self.exhausted():
                self.claim_some(n)
        elif not self.exhausted():
            self.claim_some(n)

    def _needs_listing(self) -> bool:
        return self.stale or self.relist or self.retry_listing or not self.listed or self.wake.is_set()

    def listing_interrupt(self) -> Callable[[], bool] | None:
        """What may cut a listing short: a hint (:meth:`hint_arrived`) - but never two listings in a row.

        A listing of 100,000 names takes tens of ms (much more on a loaded
        machine); the listing after an interrupted one always completes, so
        a stream of high events cannot keep the window from being listed.
        """
        if self.listing_cut:
            self.listing_cut = False  # this one completes
            return None
        return self._cut_listing if self.watch_hints else None

    def _cut_listing(self) -> bool:
        if self.hint_arrived():
            self.listing_cut = True
            return True
        return False

    def hint_arrived(self) -> bool:
        """Was a high event hinted since this fetch began (one that found none)? Claim loops stop for it.

        Called between small groups of normal claims (every 32 names) and
        before a listing: a listdir of the hints directory, ~5 us, almost
        always empty. A fetch that began by handing out high events does not
        watch (a flood of high events leaves normal work its share).
        """
        if not self.watch_hints:
            return False
        if not self.hint_seen:
            hints = os.listdir(self.hints_fd)
            self.hint_seen = bool(hints) and not self.stuck_hints.issuperset(hints)
        return self.hint_seen

    def claim_low(self, n: int) -> int:
        """Claim up to ``n`` set-aside low events (their keys' later events were kept behind them)."""
        pending = f"{self.layout.pending}/"
        got = 0
        self.serving_low = True
        try:
            for name in list(self.low_names)[:n]:
                key = self.low_names.pop(name)
                self.low_held.discard(key)
                self.skipped.discard(key)  # it was skipped only behind this low event (else it would not be here)
                d = self._prepare(pending + name, name, claim=True)
                if d is not None:
                    self.ready.append(d)
                    got += 1
                self.relist = True  # later events of its key were skipped: list again once through
        finally:
            self.serving_low = False
        return got

    def set_aside_low(self, name: str, key: str) -> None:
        """The walk read a low event: keep it (and its key's later events) for the low share."""
        self.low_names[name] = key
        self.low_held.add(key)

    def reset_lanes(self) -> None:
        """A new listing: the walk finds the low events again, in order."""
        self.low_names = {}
        self.low_held = set()

    def close_lanes(self) -> None:
        if self.hints_fd >= 0:
            os.close(self.hints_fd)
            self.hints_fd = -1


__all__ = ["HINTS", "LEDGER", "KeyLedger", "PriorityLanes", "key_hash", "write_hints"]
