"""The spool's stores for handlers (:mod:`poetctl.storage`): function state, feedback, learning state.

* ``state/<fn>/current.json``: the function's current version and metadata.
* ``state/<fn>/history/<version>.json``: one file per version ever recorded.
* ``feedback/pending/<id>.json`` -> ``feedback/processed/<id>.json`` once the
  learning engine has incorporated it.
* ``state/learning.json``: the learning engine's document, written under an
  ``flock`` on ``run/learning.lock`` (several daemons share it).

Every write is atomic and durable (tmp, fsync, rename, fsync dir). Function
names, versions and ids are checked against strict patterns before they
become path parts. Nothing is read or written through a link: directories
are opened with ``O_NOFOLLOW`` one component at a time
(:class:`~poetctl.backends.fs.safefs.SpoolDir`) and files are opened relative to them
with ``O_NOFOLLOW``; a link is refused with :class:`SpoolIOError` (exit 74).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from ...errors import InputMissing, InvalidData, PoetError, SpoolIOError
from ...event import parse_json
from ...ids import EVENT_ID_RE, FUNCTION_NAME_RE, VERSION_RE, check_path_part
from ...storage import LEARNING_FILE, LEARNING_SECTIONS, MAX_LEARNING_BYTES, parse_learning
from .layout import DIR_MODE, FILE_MODE, SpoolLayout
from .reader import CorruptEvent
from .safefs import SpoolDir, make_dir
from .writer import write_atomic

_JSON_OPTS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
MAX_READ = 16 * 1024 * 1024


def _open(layout: SpoolLayout, rel: str, *, create: bool = False) -> SpoolDir | None:
    """``rel`` opened without following links (a link raises LinkedDir, 74); None if absent and not ``create``."""
    if create:
        return make_dir(layout, rel)
    try:
        return SpoolDir(layout, rel)
    except FileNotFoundError:
        return None


def _child(d: SpoolDir, name: str, *, create: bool = False) -> SpoolDir | None:
    if create:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=d.fd)
            d.fsync()
        except FileExistsError:
            pass
        except OSError as exc:
            raise SpoolIOError(f"cannot create {d.path / name}: {exc.strerror}") from None
    try:
        return d.child(name)
    except FileNotFoundError:
        return None


def read_json(d: SpoolDir, name: str) -> Any:
    """A state or feedback file, read without following a link: refused (74) if it is a link, 65 if damaged.

    Damaged means what :func:`~poetctl.event.parse_json` refuses: not JSON, nested too
    deep (checked before anything recursive touches it), a duplicate key, an integer
    beyond 64 bits.
    """
    try:
        data = d.read(name, MAX_READ)
    except CorruptEvent as exc:
        raise SpoolIOError(f"{d.path / name}: {exc.detail}; refusing to read it (a symlink?)") from None
    return parse_json(data, where=str(d.path / name))


def updated_at(record: dict[str, Any]) -> float | None:
    """A state record's ``updated_at`` if it is a number (a hand-made file may hold anything)."""
    t = record.get("updated_at")
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


class StateStore:
    """Per-function state: ``current`` plus an append-only ``history`` by version.

    Every directory is opened without following links and every file is
    read as a regular file relative to it: a linked ``state/``,
    ``state/<fn>``, ``history/`` or state file is refused with
    :class:`SpoolIOError` (74), never followed.
    """

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout

    def _fn_dir(self, function_name: str, *, create: bool = False) -> SpoolDir | None:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        state = _open(self.layout, "state", create=create)
        if state is None:
            return None
        with state:
            return _child(state, function_name, create=create)

    def current(self, function_name: str) -> dict[str, Any] | None:
        """The current state of ``function_name``, or None if it has none."""
        d = self._fn_dir(function_name)
        if d is None:
            return None
        with d:
            try:
                cur = read_json(d, "current.json")
            except FileNotFoundError:
                return None
        if not isinstance(cur, dict):
            raise InvalidData("expected a JSON object", where=str(d.path / "current.json"))
        return cur

    def history(self, function_name: str) -> list[dict[str, Any]]:
        """Every recorded version, oldest first (by ``updated_at``)."""
        fn = self._fn_dir(function_name)
        if fn is None:
            return []
        with fn:
            d = _child(fn, "history")
        if d is None:
            return []
        out = []
        with d:
            for name in d.names():
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    rec = read_json(d, name)
                except FileNotFoundError:
                    continue
                except InvalidData:
                    continue  # a damaged version file ('poetctl fsck' reports it): the others still show
                if isinstance(rec, dict):
                    out.append(rec)
        # A record without a numeric updated_at (hand-made; 'poetctl fsck' reports it) sorts last, by version.
        out.sort(key=lambda r: (updated_at(r) is None, updated_at(r) or 0.0, str(r.get("version"))))
        return out

    def functions(self) -> list[str]:
        """Functions with a state directory (a linked one is left out: :meth:`current` would refuse it)."""
        d = _open(self.layout, "state")
        if d is None:
            return []
        with d:
            return sorted(n for n in d.names() if FUNCTION_NAME_RE.match(n) and d.is_dir(n))

    def record_version(
        self,
        function_name: str,
        version: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        previous_version: str | None = None,
        at: float | None = None,
    ) -> dict[str, Any]:
        """Write ``history/<version>.json`` and make it ``current.json``; return the state.

        Idempotent per (function, version, event): writing the same event again
        rewrites identical content.
        """
        check_path_part("version", version, VERSION_RE)
        fn_dir = self._fn_dir(function_name, create=True)
        assert fn_dir is not None
        with fn_dir:
            hist = _child(fn_dir, "history", create=True)
            assert hist is not None
            with hist:
                name = f"{version}.json"
                updated_at = time.time() if at is None else at
                try:
                    prev = read_json(hist, name)
                    if isinstance(prev, dict):
                        updated_at = prev.get("updated_at", updated_at)
                except (FileNotFoundError, InvalidData):
                    pass
                state = {
                    "function_name": function_name,
                    "version": version,
                    "previous_version": previous_version,
                    "updated_at": updated_at,
                    "event_id": event_id,
                    **data,
                }
                body = orjson.dumps(state, option=_JSON_OPTS)
                hist.write_atomic(name, body)
            fn_dir.write_atomic("current.json", body)
        return state

    def require(self, function_name: str) -> dict[str, Any]:
        cur = self.current(function_name)
        if cur is None:
            raise InputMissing(f"no state for function {function_name!r} in {self.layout.state}")
        return cur


class FeedbackStore:
    """Feedback records waiting for (pending) or incorporated by (processed) the learning engine.

    ``feedback/pending`` and ``feedback/processed`` are opened without
    following links (a linked one raises :class:`SpoolIOError`, 74); a record
    that is a link is never read or moved.
    """

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout

    def _dir(self, which: str, *, create: bool = False) -> SpoolDir | None:
        return _open(self.layout, f"feedback/{which}", create=create)

    def add(self, feedback_id: str, record: dict[str, Any]) -> bool:
        """Store a pending record; False (no-op) if that id is already pending or processed."""
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        name = f"{feedback_id}.json"
        processed = self._dir("processed")
        if processed is not None:
            with processed:
                if processed.exists(name):
                    return False
        pending = self._dir("pending", create=True)
        assert pending is not None
        with pending:
            if pending.exists(name):
                return False
            pending.write_atomic(name, orjson.dumps(record, option=_JSON_OPTS))
        return True

    def pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._iter("pending")

    def processed(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._iter("processed")

    def _iter(self, which: str) -> Iterator[tuple[str, dict[str, Any]]]:
        d = self._dir(which)
        if d is None:
            return
        with d:
            for n in sorted(n for n in d.names() if n.endswith(".json") and not n.startswith(".")):
                try:
                    rec = read_json(d, n)
                except (OSError, PoetError):
                    continue  # gone, a link, or damaged ('poetctl fsck' reports it)
                if isinstance(rec, dict):
                    yield n[:-5], rec

    def mark_processed(self, feedback_id: str) -> bool:
        """Move a record from pending to processed; False if it was not pending (or is not a regular file)."""
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        name = f"{feedback_id}.json"
        pending = self._dir("pending")
        if pending is None:
            return False
        with pending:
            if not pending.is_regular(name):
                return False
            processed = self._dir("processed", create=True)
            assert processed is not None
            with processed:
                try:
                    pending.rename(name, processed, name, replace=True)
                except FileNotFoundError:
                    return False
                processed.fsync()
            pending.fsync()
        return True


class FsLearningState:
    """``state/learning.json``, read and replaced under a thread lock plus an ``flock`` on ``run/learning.lock``.

    Read without following a link (a linked file or ``state/``: 74); a damaged
    document is refused (65) and left as it is.
    """

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout
        self._lock = threading.Lock()

    def locked(self) -> _Locked:
        return _Locked(self)

    def load(self) -> dict[str, Any]:
        where = str(self.layout.state / LEARNING_FILE)
        try:
            with SpoolDir(self.layout, "state") as d:
                data = parse_learning(d.read(LEARNING_FILE, MAX_LEARNING_BYTES), where)
        except FileNotFoundError:
            data = {}
        except CorruptEvent as exc:
            raise SpoolIOError(f"{where}: {exc.detail}; refusing to read it (a symlink?)") from None
        for k in LEARNING_SECTIONS:
            data.setdefault(k, {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        write_atomic(self.layout.state, LEARNING_FILE, orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


class _Locked:
    """Thread lock plus an flock on run/learning.lock (several daemons share the state)."""

    def __init__(self, store: FsLearningState) -> None:
        self.store = store
        self.fd = -1

    def __enter__(self) -> None:
        store = self.store
        store._lock.acquire()
        try:
            os.makedirs(store.layout.state, 0o750, exist_ok=True)
            self.fd = os.open(
                store.layout.run / "learning.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
            )
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            store._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self.fd)
        finally:
            self.fd = -1
            self.store._lock.release()


class FsStorage:
    """The three stores (:class:`poetctl.storage.Storage`) of one spool."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout
        self.state = StateStore(layout)
        self.feedback = FeedbackStore(layout)
        self.learning = FsLearningState(layout)


__all__ = ["FeedbackStore", "FsLearningState", "FsStorage", "StateStore", "read_json", "updated_at"]
