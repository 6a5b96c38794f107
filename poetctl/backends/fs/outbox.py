"""The spool as an outbox (hybrid mode): which committed events exist, and which were forwarded.

Emit is not touched: an event is *committed* once it is in ``pending/``,
``inflight/<owner>/``, ``processed/`` or ``dead/`` (quarantined files in
``corrupt/`` are not events). The forwarder lists those directories by name
(never a stat per file) and forwards what its *forwarded log* does not name.

The forwarded log lives in ``run/outbox/``: append-only segments
``forwarded.<n>.log``, one event id per line, each batch appended with one
``write`` and made durable with one ``fsync`` after JetStream acknowledged it.
A process always starts a new segment (``O_EXCL``), so a line torn by a crash
is only ever the last line of an old segment, where it is ignored: its event
is simply forwarded again, and JetStream drops the copy (``Nats-Msg-Id``).
:meth:`ForwardedLog.compact` folds the segments into one holding only ids
still in the spool, so the log stays as large as the spool's retention.

Every file is opened relative to a no-follow directory descriptor
(:class:`~.safefs.SpoolDir`), created ``O_EXCL|O_NOFOLLOW`` with mode 0640;
``run/outbox/forwarder.lock`` is flocked by the one forwarder of a spool.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ...errors import SpoolIOError, TemporaryFailure
from ...ids import time_of
from .layout import FILE_MODE, SUFFIX, SpoolLayout
from .paths import OUTBOX as OUTBOX  # spelled there: status checks for it without importing this module
from .safefs import SpoolDir, make_dir, open_dir

LOCK = "forwarder.lock"
SEGMENT_RE = re.compile(r"^forwarded\.(\d{8})\.log\Z")
# Where committed events can be, in the order events flow (a file moved during a listing is found later).
EVENT_DIRS = ("events/pending", "events/inflight", "events/processed", "events/dead")
MAX_SEGMENT_BYTES = 1 << 30
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ID_LINE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")


def enabled(layout: SpoolLayout) -> bool:
    """True if this spool has an outbox (a forwarder ran on it once): ``status`` then shows the backlog."""
    return os.path.isdir(layout.root / OUTBOX) and not os.path.islink(layout.root / OUTBOX)


def committed(layout: SpoolLayout, step: Callable[[str], None] | None = None) -> dict[str, str]:
    """Every committed event id -> the directory (relative to the root) it was listed in.

    Names only: one ``listdir`` per directory, in the order events flow
    (``step``, if given, is called with each directory's path after it was
    listed: the forwarder polls its arrivals there, tests move files there).
    An event that only moves forward during the listing is always found (it
    can only move into a directory listed later); one that moves backwards
    into ``pending/`` (a hand-back, recovery, ``dead retry``), or is committed
    while ``pending/`` is listed, may be missed: :mod:`.arrivals` names those.
    An event may also be named twice (the dict keeps one).
    """
    found: dict[str, str] = {}
    for rel in EVENT_DIRS:
        d = open_dir(layout, rel)
        if d is None:
            continue
        with d:
            if rel == "events/inflight":
                owners = d.names()
                if step is not None:
                    step(rel)
                for owner in owners:
                    if owner.startswith(".") or not d.is_dir(owner):
                        continue
                    try:
                        sub = d.child(owner)
                    except FileNotFoundError:
                        continue  # the owner's directory went away (its daemon finished)
                    with sub:
                        add_names(found, sub.names(), sub.rel)
                    if step is not None:
                        step(sub.rel)
                continue
            add_names(found, d.names(), rel)
        if step is not None:
            step(rel)
    return found


def add_names(found: dict[str, str], names: Iterable[str], rel: str) -> None:
    """Add the event ids among file ``names`` (``<id>.json``, not hidden) to ``found``, listed in ``rel``."""
    for name in names:
        if name.endswith(SUFFIX) and not name.startswith("."):
            found.setdefault(name[: -len(SUFFIX)], rel)


def read_committed(layout: SpoolLayout, event_id: str, hint: str, max_bytes: int) -> bytes | None:
    """The stored bytes of ``event_id``, looked for first where it was listed, then along the flow.

    None if it is nowhere any more (pruned, purged, quarantined). Raises
    :class:`~.reader.CorruptEvent` for a file that is not a regular file or too large.
    """
    name = event_id + SUFFIX
    for rel in _search_order(layout, hint):
        d = open_dir(layout, rel)
        if d is None:
            continue
        with d:
            try:
                return d.read(name, max_bytes)
            except FileNotFoundError:
                continue
    return None


def _search_order(layout: SpoolLayout, hint: str) -> Iterator[str]:
    yield hint
    for rel in EVENT_DIRS:
        if rel == "events/inflight":
            d = open_dir(layout, rel)
            if d is None:
                continue
            with d:
                owners = [o for o in d.names() if not o.startswith(".")]
            yield from (f"{rel}/{o}" for o in owners if f"{rel}/{o}" != hint)
        elif rel != hint:
            yield rel


@dataclass(frozen=True)
class Backlog:
    """Committed events not yet forwarded: how many, and the age in seconds of the oldest (None if unknown)."""

    count: int
    oldest_age: float | None


def backlog_of(pending: Iterable[str], now: float) -> Backlog:
    """The :class:`Backlog` of these not-yet-forwarded ids (age from the time in UUIDv7/derived ids)."""
    n = 0
    oldest: int | None = None
    for event_id in pending:
        n += 1
        t = time_of(event_id)
        if t is not None and (oldest is None or t < oldest):
            oldest = t
    return Backlog(n, None if oldest is None else max(0.0, now - oldest / 1000))


class ForwardedLog:
    """The durable set of forwarded ids of one spool (``run/outbox/forwarded.*.log``).

    ``lock=True`` (the forwarder) takes ``run/outbox/forwarder.lock`` without
    waiting (:class:`TemporaryFailure`, 75, if another forwarder holds it) and
    opens a new segment for appending. ``lock=False`` only reads (``status``).
    """

    def __init__(self, layout: SpoolLayout, *, lock: bool = True) -> None:
        self.layout = layout
        self.dir: SpoolDir = make_dir(layout, OUTBOX) if lock else SpoolDir(layout, OUTBOX)
        self.ids: set[str] = set()
        self._lock_fd = -1
        self._fd = -1
        self._segment = ""
        self._size = 0
        try:
            if lock:
                self._take_lock()
            self.ids = self._load()
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        try:
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=self.dir.fd)
        except OSError as exc:
            raise SpoolIOError(f"cannot open {self.dir.path / LOCK}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TemporaryFailure(f"another forwarder holds {self.dir.path / LOCK}; try again later") from None
        self._lock_fd = fd

    def segments(self) -> list[str]:
        """The segment names, oldest first."""
        return sorted(n for n in self.dir.names() if SEGMENT_RE.match(n))

    def _load(self) -> set[str]:
        ids: set[str] = set()
        for name in self.segments():
            try:
                data = self.dir.read(name, MAX_SEGMENT_BYTES)
            except FileNotFoundError:
                continue  # compacted away by the forwarder meanwhile (a reader without the lock)
            lines = data.split(b"\n")
            # The last element is b"" after a whole last line, or a line torn by a crash: skipped.
            for line in lines[:-1]:
                if _ID_LINE.match(line):
                    ids.add(line.decode())
        return ids

    def _open_segment(self) -> None:
        existing = self.segments()
        n = int(SEGMENT_RE.match(existing[-1]).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        name = f"forwarded.{n:08d}.log"
        try:
            self._fd = os.open(name, _APPEND, FILE_MODE, dir_fd=self.dir.fd)
        except OSError as exc:
            raise SpoolIOError(f"cannot create {self.dir.path / name}: {exc.strerror}") from None
        self._segment, self._size = name, 0
        self.dir.fsync()

    def record(self, ids: Iterable[str]) -> None:
        """Durably add ``ids`` (one write, one fsync). Raises :class:`SpoolIOError`."""
        new = [i for i in ids if i not in self.ids]
        if not new:
            return
        if self._fd < 0:
            self._open_segment()
        data = ("\n".join(new) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            # A partial line may be on disk: start a new segment so nothing is appended after it.
            os.close(self._fd)
            self._fd = -1
            raise SpoolIOError(f"cannot append to {self.dir.path / self._segment}: {exc.strerror}") from None
        self._size += len(data)
        self.ids.update(new)

    def compact(self, live: Iterable[str]) -> int:
        """Keep only the forwarded ids still in ``live`` (the spool's committed ids): one new segment.

        The new segment is complete and durable before the old ones go, so a
        crash at any point leaves a log that names at least every live
        forwarded id. Returns how many ids were dropped.
        """
        keep = self.ids.intersection(live)
        dropped = len(self.ids) - len(keep)
        old = self.segments()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        n = int(SEGMENT_RE.match(old[-1]).group(1)) + 1 if old else 1  # type: ignore[union-attr]
        name = f"forwarded.{n:08d}.log"
        self.dir.create(name, "".join(i + "\n" for i in sorted(keep)).encode())
        self.dir.fsync()
        for seg in old:
            self.dir.unlink(seg)
        self.dir.fsync()
        self.ids = keep
        return dropped

    def close(self) -> None:
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        self.dir.close()

    def __enter__(self) -> ForwardedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backlog(layout: SpoolLayout, now: float) -> Backlog | None:
    """The forward backlog of a spool as ``status`` shows it, or None if the spool has no outbox.

    Reads the forwarded log without the forwarder's lock and lists the event
    directories: O(events in the spool), names only.
    """
    if not enabled(layout):
        return None
    with ForwardedLog(layout, lock=False) as log:
        done = log.ids
    return backlog_of((i for i in committed(layout) if i not in done), now)
