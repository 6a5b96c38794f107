"""Priority delivery on the spool: the key ledger and the high lane's hints (the consumer's side is lanes.py).

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
group commit, taken by its leader for every publish of the group):
:data:`BUCKETS` buckets of :data:`WAYS` keys, each key with two ids - its
event noted last and its event that sorts last (ids sort by time; the daemon
claims a key's events in that order). Every publish notes its events there
before any of them is visible in ``pending/``. A high event of key K takes
the fast lane only if

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
:meth:`~.lanes.PriorityLanes.claim_low` claims them within the low share.
"""

from __future__ import annotations

import _thread  # threading's own lock/local types; threading itself stays out of a one-event emit (start-up)
import fcntl
import mmap
import os
from collections.abc import Callable, Sequence

from ...priority import HIGH
from .layout import FILE_MODE, SpoolLayout
from .runfile import blake2b, open_run_file

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    from ...transport import Outgoing

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
_HEX = "0123456789abcdef"


def _pack(eid: str) -> bytes | None:
    """The 16 bytes of a lowercase UUID (``[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}``), else None.

    Checked without a regular expression, whose compile would cost a one-event emit ~0.6M instructions.
    """
    if len(eid) != 36 or not eid[8] == eid[13] == eid[18] == eid[23] == "-":
        return None
    digits = eid.replace("-", "")
    return bytes.fromhex(digits) if len(digits) == 32 and not digits.strip(_HEX) else None


def _unpack(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def key_hash(key: str) -> bytes:
    """8 bytes identifying a partition key across processes (never 0: 0 marks an empty slot)."""
    h = blake2b(key.encode(), digest_size=8).digest()
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
        self._mutex = _thread.RLock()
        self._hashes: dict[str, bytes] = {}  # key -> key_hash(key), bounded (see _note)

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
        return self.note_groups([(items, [key_of(it.event) for it in items])])[0]

    def note_groups(self, groups: Sequence[tuple[Sequence[Outgoing], Sequence[str]]]) -> list[set[str]]:
        """:meth:`note` for the publishes of one group commit, in order, under one lock: ``(items, keys)`` each.

        The group's leader calls this before anything of the group is visible
        (so every event is noted as its key's newest before it can be claimed).
        A high event never jumps an event of its key noted earlier in the same
        call: they are published together, so the earlier one is not pending yet.
        """
        with self._mutex:
            try:
                m = self._open()
            except OSError:
                return [set() for _ in groups]
            return self._note(m, self.fd, groups)

    def _note(
        self, m: mmap.mmap, fd: int, groups: Sequence[tuple[Sequence[Outgoing], Sequence[str]]]
    ) -> list[set[str]]:
        """:meth:`note_groups` with the ledger open and ``self._mutex`` held."""
        fasts: list[set[str]] = []
        noted: set[bytes] = set()
        hashes = self._hashes
        if len(hashes) > 4096:
            hashes.clear()  # a bounded cache: keys mostly repeat (functions, correlations)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the thread mutex is held by the caller (no contextmanager: hot path)
        try:
            complete = m[_COMPLETE] == 1
            # A high event of key K jumps only if K's slot holds K and both its noted-last and its
            # sorts-last event are finished: any earlier event of K was claimed before either of them,
            # or was still being emitted concurrently with this one (no order between those).
            for items, keys in groups:
                fasts.append(fast := set())
                for it, key in zip(items, keys, strict=True):
                    ev = it.event
                    h = hashes.get(key) or hashes.setdefault(key, key_hash(key))
                    b = int.from_bytes(h, "little") % BUCKETS
                    base = _HEAD + b * _BUCKET
                    bucket = m[base : base + _BUCKET]  # one read of the 4 ways, searched as bytes
                    i = _way(bucket, h)
                    last = top = _EMPTY
                    if i >= 0:
                        last, top = bucket[i + 8 : i + 24], bucket[i + 24 : i + 40]
                    if ev.priority == HIGH and (
                        self.settled(last, top, noted) if i >= 0 else complete and not m[_LOSSY + b]
                    ):
                        fast.add(ev.id)
                    eid = _pack(ev.id) or _UNKNOWN
                    noted.add(eid)  # not committed yet: a later event of this group must not pass it
                    if i >= 0:
                        off = base + i
                    else:
                        free = _way(bucket, _EMPTY)
                        off = base + free if free >= 0 else self._evict(m, base, b, h, noted)
                        top = eid
                    # The key's event that sorts last stays so (an unknown id sorts last for good).
                    m[off : off + 40] = h + eid + max(top, eid)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fasts

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
        if name_exists(pending, name):
            return False
        for d in self.layout.inflight_dirs():
            if name_exists(d, name):
                return False
        return not name_exists(pending, name)

    def close(self) -> None:
        with self._mutex:  # a note() running now keeps its fd and map until it is done
            if self.map is not None:
                self.map.close()
                self.map = None
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _way(bucket: bytes, h: bytes) -> int:
    """The offset in ``bucket`` of the way whose key hash is ``h`` (the first such), or -1."""
    i = bucket.find(h)
    while i >= 0 and i % SLOT:  # a match inside a way's ids, not at a key hash
        i = bucket.find(h, i + 1)
    return i


def _names(directory: os.PathLike[str] | str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def name_exists(directory: os.PathLike[str] | str, name: str) -> bool:
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


__all__ = ["HINTS", "LEDGER", "KeyLedger", "key_hash", "write_hints"]
