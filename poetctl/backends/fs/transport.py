"""The filesystem spool as a :class:`poetctl.transport.Transport`.

Publishing is the spool's group commit (:class:`~.writer.GroupCommitter`:
tmp files, fsync or syncfs, rename fresh ids / link keyed ids into
``pending/`` under the emit lock, one directory fsync), unchanged; queries are
:mod:`.query` (listings, the index), prune is :class:`~.prune.Pruner`.
The daemon's side is :class:`~.consumer.FsConsumer` (:meth:`FsTransport.consumer`).
"""

from __future__ import annotations

import _thread  # threading's own lock/local types; threading itself stays out of a one-event emit (start-up)
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ...limits import Limits
from ...stdjson import loads
from ...transport import EVENT_STATES, Outgoing, Quarantined, Query, State, Stored, quarantine_line
from .corrupt_names import REASON_SUFFIX, quarantined, visible
from .layout import SpoolLayout
from .limits import SpoolLimits
from .priority import KeyLedger, write_hints
from .stream import TmpStream
from .writer import GroupCommitter

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    from ...config import Config
    from .consumer import FsConsumer
    from .writer import _Member

_NO_TABLE: dict[str, Any] = {}  # no [limits] table (never changed)
_STATE_OF_DIR = {"pending": State.PENDING, "processed": State.PROCESSED, "dead": State.DEAD, "corrupt": State.CORRUPT}


class FsTransport:
    """One spool (a root path or a :class:`SpoolLayout`). Thread-safe; ``.layout`` is the spool's layout.

    ``clock`` is handed to consumers (retry times, ownership); ``config``
    (optional) gives consumers the event size limit; ``alive(owner)`` decides
    whether a consumer's owner still lives (default: its pid and start time,
    or its heartbeat's age on another host).
    The spool's directories are created on the first publish or consumer.
    """

    def __init__(
        self,
        root_or_layout: str | os.PathLike[str] | SpoolLayout,
        *,
        clock: Callable[[], float] = time.time,
        config: Config | None = None,
        alive: Callable[[str], bool] | None = None,
    ) -> None:
        self.layout = root_or_layout if isinstance(root_or_layout, SpoolLayout) else SpoolLayout(root_or_layout)
        self.clock = clock
        self.config = config
        self.alive = alive
        self.committer = GroupCommitter(
            self.layout, self.layout.pending, refuse=self._refuse, before=self._group_noted, after=self._group_added
        )
        self.dead_owners: set[str] = set()  # consumers of this process that "died" (a test hook)
        self._consumers: list[FsConsumer] = []
        self._lock = _thread.allocate_lock()
        self._ready = False
        self._ledger: KeyLedger | None = None  # priority: the key ledger, opened on the first publish
        self.limits_state = SpoolLimits(self.layout)  # backpressure: the pending gauge, rate buckets
        self._key_of: Callable[[Any], str] | None = None
        self._limits_cache: tuple[Any, dict[str, Any], Limits] | None = None  # see _limits()

    def _attach(self, c: FsConsumer) -> None:
        with self._lock:
            self._consumers = [*self._consumers, c]

    def _detach(self, c: FsConsumer) -> None:
        with self._lock:
            self._consumers = [x for x in self._consumers if x is not c]

    def _wake_all(self) -> None:
        """Wake this process's consumers (what another process publishes, the watcher or a rescan finds)."""
        for c in self._consumers:
            c.interrupt()

    def _ensure(self) -> None:
        if not self._ready:
            if not self.layout.pending.is_dir():
                self.layout.init()
            self.limits_state.ready()
            self._ready = True

    def _refuse(self, event_id: str) -> BaseException:
        return Quarantined(quarantined_message(self.layout, event_id))

    # -- publishing -------------------------------------------------------------------------
    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        """The group commit into ``pending/`` (see :meth:`poetctl.transport.Transport.publish`)."""
        if not items:
            return []
        self._ensure()
        rows = _rows(items)
        share = _Share(items, self._keys(items))  # noted by the group's leader (see _group_noted)
        added = self.committer.commit(rows, share)
        self._published(rows, added, share.fast)
        return added

    def stream(self, admit: float | None) -> FsStream | None:
        """A publish whose files are written while the caller builds its events (see :mod:`.stream`).

        None when ``admit`` is given and ``[limits]`` are set: admission needs
        the whole group first, so such a group goes through :meth:`publish`.
        """
        if admit is not None and self._limits().any:
            return None
        self._ensure()
        return FsStream(self)

    def _group_noted(self, group: Sequence[_Member]) -> None:
        """The committer's ``before``: note every publish of the group in the key ledger, under one lock.

        The leader runs it ahead of the group's first rename, so each event is
        noted as its key's newest before it is visible in ``pending/``.
        """
        shares = [s for m in group if (s := m.ctx) is not None and s.keys is not None]
        if shares:
            assert self._ledger is not None  # opened by _keys()
            for s, fast in zip(shares, self._ledger.note_groups([(s.items, s.keys) for s in shares]), strict=True):
                s.fast = fast

    def _group_added(self, group: Sequence[_Member]) -> None:
        """The committer's ``after``: add what the group published to the pending gauge (one flock per group)."""
        n = nbytes = 0
        for m in group:
            if (s := m.ctx) is not None and m.error is None:
                for it, new in zip(s.items, m.added, strict=True):
                    if new:
                        n += 1
                        nbytes += len(it.data)
        if n:
            self.limits_state.added(n, nbytes)

    def _published(self, rows: list[tuple[str, bytes, bool]], added: list[bool], fast: set[str]) -> None:
        """Bookkeeping after a commit (the gauge was updated by the group's leader): hints, this process's consumers."""
        if fast:
            write_hints(self.layout, [r[0] for r, new in zip(rows, added, strict=True) if new and r[0] in fast])
        if self._consumers:
            self._wake_all()

    def admit(self, items: Sequence[Outgoing], wait: float, partial: bool = False) -> int:
        """How many leading ``items`` fit the ``[limits]`` now (waiting up to ``wait`` s); raises Backpressure."""
        limits = self._limits()
        if not limits.any or not items:
            return len(items)
        self._ensure()
        return self.limits_state.admit(items, limits, wait, partial)

    def _limits(self) -> Limits:
        """``Limits.of(self.config)``, parsed again only when the ``[limits]`` table changed.

        The config may be changed after construction (replaced or edited in
        place), so the cache keeps the table object and a deep copy of it: an
        equal table (a dict compare, far cheaper than the parse) is unchanged.
        """
        table = getattr(self.config, "limits", None) or _NO_TABLE  # one object: the identity check holds
        cached = self._limits_cache
        if cached is not None and cached[0] is table and cached[1] == table:
            return cached[2]
        limits = Limits.of(self.config)
        snapshot = {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
        self._limits_cache = (table, snapshot, limits)
        return limits

    def _keys(self, items: Sequence[Outgoing]) -> list[str]:
        """The events' partition keys (on the caller's thread: a failure is this publish's own), the ledger opened."""
        if self._ledger is None:
            from ...partition import DEFAULT_PARTITION_KEY, key_function

            paths = (self.config.daemon.get("partition_key") if self.config is not None else None) or ()
            self._key_of = key_function(tuple(paths) or DEFAULT_PARTITION_KEY)
            self._ledger = KeyLedger(self.layout)
        key_of = self._key_of
        assert key_of is not None
        return [key_of(it.event) for it in items]

    def _note(self, items: Sequence[Outgoing]) -> set[str]:
        """Note the events in the key ledger now (see backends/fs/priority.py); the high ones that may jump."""
        keys = self._keys(items)
        assert self._ledger is not None
        return self._ledger.note_groups([(items, keys)])[0]

    def consumer(self, name: str | None = None, **options: Any) -> FsConsumer:
        """A daemon's consumer on this spool (see :class:`~.consumer.FsConsumer` for ``options``)."""
        from .consumer import FsConsumer

        self._ensure()
        return FsConsumer(self, name, **options)

    # -- queries ------------------------------------------------------------------------------
    def state_of(self, event_id: str) -> State | None:
        from ...ids import is_event_id

        if not is_event_id(event_id):
            return None  # never joined into a path
        path = self.layout.locate(event_id)
        if path is None:
            return None
        return _STATE_OF_DIR.get(path.parent.name, State.INFLIGHT)

    def get(self, event_id: str) -> Stored | None:
        from ...ids import is_event_id
        from .query import find, load

        if not is_event_id(event_id):
            return None
        found = find(self.layout, event_id)
        if found is not None:
            state = State(found.state)
            info = _read_json(self.layout.dead / f"{event_id}.error") if state is State.DEAD else None
            return Stored(found.id, state, found.event, info)
        path = self.layout.corrupt / f"{event_id}.json"
        if not os.path.lexists(path):
            return None
        f = load(path, "corrupt", None)
        return Stored(event_id, State.CORRUPT, f.event if f else None, _read_json(Path(f"{path}{REASON_SUFFIX}")))

    def select(self, query: Query, limit: int | None = None) -> Iterator[Stored]:
        """Newest first over pending, inflight, processed and dead (quarantined input is not selected)."""
        from .query import SMALL_SPOOL, newest, open_index

        states = [s.value for s in query.states if s in EVENT_STATES]
        if not states:
            return iter(())
        index = open_index(self.layout, SMALL_SPOOL)
        try:
            found = newest(self.layout, query, states, limit, index=index)
        finally:
            if index is not None:
                index.close()
        out = []
        for f in found:
            state = State(f.state)
            info = _read_json(self.layout.dead / f"{f.id}.error") if state is State.DEAD else None
            out.append(Stored(f.id, state, f.event, info))
        return iter(out)

    def counts(self) -> dict[State, int]:
        """Counted from the listings (exact; the index lags the daemon by a moment)."""
        lay = self.layout
        return {
            State.PENDING: _count_events(lay.pending),
            State.INFLIGHT: sum(_count_events(d) for d in lay.inflight_dirs()),
            State.PROCESSED: _count_events(lay.processed),
            State.DEAD: _count_events(lay.dead),
            State.CORRUPT: _count_corrupt(lay.corrupt),
        }

    def prune(self, before: float, states: Sequence[State] = (State.PROCESSED,)) -> int:
        """Delete processed (and, when named, dead) events older than ``before``, as ``poetctl prune`` does.

        Quarantined input is never deleted by the spool: CORRUPT is refused like PENDING and INFLIGHT.
        """
        from .index import Index
        from .prune import Pruner, usable_index
        from .writer import spool_lock

        bad = {State.PENDING, State.INFLIGHT, State.CORRUPT} & set(states)
        if bad:
            raise ValueError(f"prune removes processed and dead events only, not {sorted(bad)}")
        if not self.layout.exists():
            return 0
        index = Index.open_existing(self.layout) if usable_index(self.layout, locking=True) else None
        try:
            with spool_lock(self.layout, "prune"):
                p = Pruner(self.layout, 0.0, index=index, dead=State.DEAD in states, now=before)
                if State.PROCESSED in states:
                    p.processed()
                if State.DEAD in states:
                    p.dead_letters()
                p.shutdown()
        finally:
            if index is not None:
                index.close()
        return p.report.processed + p.report.dead

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        self.limits_state.close()


class FsStream:
    """One group for :meth:`FsTransport.stream`: :meth:`add` each event's stored bytes, then :meth:`commit`.

    Not thread-safe (one caller's thread). Until :meth:`commit` returns
    nothing is visible; :meth:`abort` (or a failure) removes the tmp files.
    """

    def __init__(self, transport: FsTransport) -> None:
        self._t = transport
        self._tmp = TmpStream(transport.layout)

    def add(self, data: bytes) -> None:
        """Write the next event's stored bytes to a tmp file (raises :class:`SpoolIOError`, then aborted)."""
        self._tmp.add(data)

    def commit(self, items: Sequence[Outgoing]) -> list[bool]:
        """Publish ``items`` (their ``data`` added in this order) as :meth:`FsTransport.publish` does."""
        if not items:
            self._tmp.abort()
            return []
        t, tmp = self._t, self._tmp
        tmp.done()  # the last sync runs while the key ledger is noted
        try:
            rows = _rows(items)
            share = _Share(items, None)  # noted here (overlapping the last sync); the leader adds it to the gauge
            share.fast = t._note(items)
        except BaseException:
            tmp.abort()
            raise
        added = tmp.commit(rows, lambda m: t.committer.commit_written(m, share)).added
        t._published(rows, added, share.fast)
        return added

    def abort(self) -> None:
        """Remove what was written (idempotent)."""
        self._tmp.abort()


class _Share:
    """One publish's part of a group commit's bookkeeping: its items, their keys (None: noted already), its fast ids."""

    __slots__ = ("fast", "items", "keys")

    def __init__(self, items: Sequence[Outgoing], keys: list[str] | None) -> None:
        self.items = items
        self.keys = keys
        self.fast: set[str] = set()


def _rows(items: Sequence[Outgoing]) -> list[tuple[str, bytes, bool]]:
    """``(id, data, keyed)`` per item; a repeated id in one group: the first wins (linked, so the second finds it)."""
    seen: set[str] = set()
    rows = []
    for it in items:
        eid = it.event.id
        rows.append((eid, it.data, it.keyed or eid in seen))
        seen.add(eid)
    return rows


def _count_events(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def _count_corrupt(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return len(quarantined(visible(e.name for e in it)))
    except FileNotFoundError:
        return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object file (``.error``, ``.reason``) read without following links; None if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        value = loads(data)  # orjson's value; without importing it in a short command (poetctl.stdjson)
    except (OSError, ValueError):  # orjson.JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def quarantine_reason(layout: SpoolLayout, event_id: str) -> str | None:
    """The ``reason`` (and detail) of ``corrupt/<event_id>.json`` as one bounded line, or None if absent."""
    name = event_id + ".json"
    if not os.path.lexists(layout.corrupt / name):
        return None
    return quarantine_line(_read_json(layout.corrupt / (name + REASON_SUFFIX)))


def quarantined_message(layout: SpoolLayout, event_id: str) -> str:
    """The message of :class:`~poetctl.transport.Quarantined` (exit 65) for an id found in ``corrupt/``."""
    reason = quarantine_reason(layout, event_id) or "reason unknown"
    return (
        f"id {event_id} exists in corrupt/ (quarantined: {reason}); nothing was written. "
        f"See 'poetctl corrupt show {event_id}.json'; requeue it once fixed, or emit under another id"
    )


__all__ = ["FsStream", "FsTransport", "quarantine_reason", "quarantined_message"]
