"""Durable bookkeeping around handling: completion records, dead letters, quarantine.

* The **journal** (``events/inflight/<owner>/_journal``) gets one line per
  finished handler and per failed attempt, written with a single ``write`` as
  soon as it happens, so a SIGKILL loses none of them; it is fsync'ed in
  batches. Its head holds one "running" slot per worker (see
  :mod:`poetctl.backends.fs.running`), so a death inside a handler is an attempt
  too. When an owner dies, recovery turns its journal into
  **records** (``events/records/<id>.json``) beside the events it returns to
  pending, so the next claimer skips the finished handlers and keeps counting
  attempts.
* **Dead letters**: ``dead/<id>.json`` plus ``dead/<id>.error`` (JSON: reason,
  error, traceback, every attempt with its time), written only by
  :func:`write_error` with the contents built by
  :func:`poetctl.transport.dead_letter_info`.
* **Quarantine**: ``corrupt/<name>`` plus ``corrupt/<name>.reason``. Nothing
  is ever deleted here.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from ...daemon.retries import DIED
from ...errors import SpoolIOError
from ...transport import Attempt, Record, dead_letter_info
from .corrupt_names import REASON_SUFFIX
from .layout import FILE_MODE, SpoolLayout
from .running import RunningSlots, create_head, head_size, parse_slots
from .safefs import SpoolDir
from .writer import write_atomic

JOURNAL = "_journal"
ERROR_SUFFIX = ".error"
MAX_RECORD = 1 << 24


def record_json(record: Record) -> bytes:
    """``events/records/<id>.json``: :meth:`Record.to_dict` as JSON."""
    return orjson.dumps(record.to_dict())


def record_from_json(data: bytes) -> Record:
    """A record file back (files written before ``deliveries`` existed count none)."""
    d = orjson.loads(data)
    if not isinstance(d, dict):
        raise TypeError("a record is a JSON object")
    return Record.from_dict(d)


class Journal:
    """Append-only completion log of one daemon. Thread-safe; lines are single writes.

    With ``slots`` > 0 the file starts with one "running" slot per worker
    (:mod:`poetctl.backends.fs.running`): :meth:`running` / :meth:`idle` mark the
    handler a worker runs, so a process death during a handler counts as an
    attempt when the journal is read back.
    """

    def __init__(self, directory: Path, slots: int = 0) -> None:
        self.path = directory / JOURNAL
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._dirty = False
        self.lines = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        # The directory is this daemon's own (a fresh owner id): whatever is there is not ours to keep.
        self._head = create_head(self._fd, slots) if slots else 0
        self.slots = RunningSlots(self._fd, slots)
        self.running = self.slots.set
        self.idle = self.slots.clear

    # Lines carry the event's checksum: a replayed event (new metadata, new checksum)
    # must not inherit the completion records of its earlier run.
    def began(self, event_id: str, deliveries: int, checksum: str | None = None) -> None:
        """Delivery number ``deliveries`` of the event begins (a death from here on is an attempt).

        Durable against process death (one ``write``), and deliberately not
        fsync'ed by :meth:`sync`: a power loss is no handler's fault, so losing
        the line only forgets to charge that delivery - as the running slots
        before it never were fsync'ed either.
        """
        self._write(b"S\t" + orjson.dumps([event_id, deliveries, checksum]) + b"\n", durable=False)

    def done(self, event_id: str, handler: str, checksum: str | None = None) -> None:
        self._write(b"D\t" + orjson.dumps([event_id, handler, checksum]) + b"\n")

    def failed(self, event_id: str, attempt: Attempt, not_before: float = 0.0, checksum: str | None = None) -> None:
        """A failed attempt and when the next one is due (kept across a crash)."""
        self._write(b"F\t" + orjson.dumps([event_id, attempt.to_dict(), not_before, checksum]) + b"\n")

    def _write(self, line: bytes, durable: bool = True) -> None:
        with self._lock:
            try:
                os.write(self._fd, line)
            except OSError as exc:
                raise SpoolIOError(f"cannot write journal {self.path}: {exc.strerror}") from None
            if durable:
                self._dirty = True
            self.lines += 1

    def sync(self) -> None:
        """fsync if anything was written since the last sync.

        Writers are not held up by the fsync (``_lock`` is not held across it: a
        delivery's ``began`` line would wait 5-50 ms on a busy disk); syncs are
        serialised, so a sync that finds nothing dirty while another is running
        returns only after that one covered its lines.
        """
        with self._sync_lock:
            with self._lock:
                if not self._dirty:
                    return
                self._dirty = False  # lines written from now on wait for the next sync
            try:
                os.fsync(self._fd)
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                raise SpoolIOError(f"fsync of {self.path} failed: {exc.strerror}") from None

    def truncate(self) -> None:
        """Forget every line (only when nothing is in flight); the running slots stay."""
        with self._lock:
            os.ftruncate(self._fd, self._head)
            self._dirty = True
            self.lines = 0

    def close(self) -> None:
        with self._lock:
            self.slots.close()
            os.close(self._fd)


def read_journal(path: Path) -> dict[tuple[str, str | None], Record]:
    """Parse a journal into records per (event id, event checksum); a torn last line is ignored."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return parse_journal(data)


def parse_journal(data: bytes) -> dict[tuple[str, str | None], Record]:
    """Records per (event id, event checksum) from journal bytes (see :func:`read_journal`).

    A running slot still set means the daemon died while that handler ran: it
    becomes a failed attempt with the error :data:`~poetctl.daemon.retries.DIED`.
    """
    out: dict[tuple[str, str | None], Record] = {}
    for eid, handler, checksum, attempt, at in parse_slots(data):
        died = Attempt(handler=handler, attempt=attempt, at=at, error=DIED)
        out.setdefault((eid, checksum), Record()).merge(Record(failures=[died]))
    for line in data[head_size(data) :].split(b"\n"):
        if len(line) < 3:
            continue
        try:
            kind, body = line[:1], orjson.loads(line[2:])
            if kind == b"S":
                rec = out.setdefault((body[0], body[2] if len(body) > 2 else None), Record())
                rec.deliveries = max(rec.deliveries, int(body[1]))
            elif kind == b"D":
                checksum = body[2] if len(body) > 2 else None
                out.setdefault((body[0], checksum), Record()).done.add(body[1])
            elif kind == b"F":
                checksum = body[3] if len(body) > 3 else None
                rec = out.setdefault((body[0], checksum), Record())
                rec.merge(
                    Record(failures=[Attempt.from_dict(body[1])], not_before=float(body[2]) if len(body) > 2 else 0.0)
                )
        except (orjson.JSONDecodeError, TypeError, IndexError, KeyError, ValueError):
            continue
    return out


def journal_record(journal: dict[tuple[str, str | None], Record], event_id: str, checksum: str | None) -> Record | None:
    """What the journal says about this version of the event (lines without a checksum apply to any)."""
    exact = journal.get((event_id, checksum)) if checksum is not None else None
    legacy = journal.get((event_id, None))
    if exact is None or legacy is None:
        return exact or legacy
    merged = Record()
    merged.merge(exact)
    merged.merge(legacy)
    return merged


def stated_checksum(path: Path) -> str | None:
    """The checksum an event file states (None if unreadable: it gets quarantined later)."""
    try:
        value = orjson.loads(path.read_bytes()).get("checksum")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class RecordStore:
    """``events/records/<id>.json``: records of events waiting in pending."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.dir = layout.records

    def load_all(self) -> dict[str, Record]:
        """Every record, keyed by event id (usually none: one listing of an empty dir)."""
        out: dict[str, Record] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        for e in entries:
            if not e.name.endswith(".json") or e.name.startswith("."):
                continue
            try:
                out[e.name[:-5]] = record_from_json(Path(e.path).read_bytes())
            except (OSError, orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                continue
        return out

    def save(self, event_id: str, record: Record) -> None:
        write_atomic(self.dir, f"{event_id}.json", record_json(record))

    def drop(self, event_id: str) -> None:
        try:
            os.unlink(self.dir / f"{event_id}.json")
        except FileNotFoundError:
            pass


def save_merged(records: SpoolDir, name: str, record: Record) -> None:
    """Write ``record`` to ``events/records/<name>``, merged into the record already there.

    The one way an event handed back by recovery (the daemon's, or ``fsck
    --repair``'s requeue) keeps what its dead owner's journal says. Merging is
    :meth:`Record.merge`: finished handlers are united, each attempt is kept
    once (a recovery that died after writing the record and is done again
    must not count an attempt twice), and the later ``not_before`` wins. A
    missing or unreadable old record is replaced. ``record`` is updated.
    """
    from .reader import CorruptEvent

    try:
        record.merge(record_from_json(records.read(name, MAX_RECORD)))
    except (FileNotFoundError, CorruptEvent, ValueError, TypeError, KeyError, AttributeError):
        pass
    records.write_atomic(name, record_json(record))


def stated_checksum_at(d: SpoolDir, name: str) -> str | None:
    """:func:`stated_checksum` of ``name`` in ``d``, read without following a link (None if it is one)."""
    from .reader import CorruptEvent

    try:
        value = orjson.loads(d.read(name, 1 << 24)).get("checksum")
    except (OSError, CorruptEvent, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# corrupt/<name> beside corrupt/<name>.reason must both fit NAME_MAX (255 bytes) with a ``.<n>``
# suffix: longer names are cut and made unique again by a hash of the whole name.
MAX_QUARANTINE_NAME = 200


def bounded_name(name: str) -> str:
    """``name`` if it is valid UTF-8 of at most :data:`MAX_QUARANTINE_NAME` bytes, else a bounded, printable one.

    A longer (or undecodable) name becomes its head (undecodable bytes
    escaped as ``\\xNN``, cut at a character boundary) plus ``~`` and a hash of
    the whole name, so distinct names stay distinct.
    """
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if len(raw) <= MAX_QUARANTINE_NAME:
            return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    text = raw.decode("utf-8", "backslashreplace").encode("utf-8")
    head = text[: MAX_QUARANTINE_NAME - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def unique_target(name: str) -> Iterator[str]:
    """Candidate names in corrupt/ for a file called ``name``: bounded, then ``.1``, ``.2``...

    Each candidate is taken only if both it and its ``.reason`` are free
    (see :func:`quarantine`), so nothing is ever overwritten.
    """
    base = bounded_name(name)
    yield base
    for n in itertools.count(1):
        yield f"{base}.{n}"


def _text(s: str) -> str:
    """A file name or message as valid UTF-8 for JSON (undecodable bytes become ``\\xNN``-style escapes)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def quarantine(
    layout: SpoolLayout, path: Path, reason: str, detail: str, *, src: SpoolDir | None = None
) -> Path | None:
    """Move ``path`` (whatever it is; links are moved, not followed) to corrupt/ with a reason.

    The name in corrupt/ is bounded (see :func:`bounded_name`) and never
    replaces anything: its ``.reason`` is created first without replacing
    (a reservation), then the file is renamed in without replacing; if either
    name is taken the next candidate is tried. The ``.reason`` keeps the
    original name and directory. Both directories are opened without
    following links (``src``: the source directory, if the caller has it
    open): a linked corrupt/ or source raises :class:`SpoolIOError` and
    nothing moves. Returns the new path, or None if the file vanished first.
    """
    try:
        rel = str(path.parent.relative_to(layout.root))
    except ValueError:
        raise SpoolIOError(f"cannot quarantine {path}: not inside the spool {layout.root}") from None
    name = path.name
    info: dict[str, Any] = {"reason": reason, "detail": _text(detail), "from": _text(rel), "name": _text(name)}
    if _text(name) != name:
        info["name_hex"] = os.fsencode(name).hex()
    with ExitStack() as stack:
        sdir = src if src is not None else stack.enter_context(SpoolDir(layout, rel))
        corrupt = stack.enter_context(SpoolDir(layout, "events/corrupt"))
        for target in unique_target(name):
            info["at"] = time.time()
            info["file"] = _text(target)
            try:
                corrupt.create(target + REASON_SUFFIX, orjson.dumps(info, option=orjson.OPT_INDENT_2))
            except FileExistsError:
                continue
            try:
                sdir.rename(name, corrupt, target)
            except FileExistsError:
                corrupt.unlink(target + REASON_SUFFIX)
                continue
            except FileNotFoundError:
                corrupt.unlink(target + REASON_SUFFIX)
                return None
            except OSError as exc:
                corrupt.unlink(target + REASON_SUFFIX)
                raise SpoolIOError(f"cannot quarantine {path}: {exc.strerror}") from None
            corrupt.fsync()
            sdir.fsync()
            return layout.corrupt / target
    raise AssertionError("unreachable")  # pragma: no cover - unique_target never ends


def dead_letter(layout: SpoolLayout, path: str | Path, event_id: str, info: dict[str, Any]) -> Path:
    """Move an event file to dead/ with ``<id>.error`` saying ``info`` (:func:`dead_letter_info`). Durable on return."""
    src = Path(path)
    try:
        rel = str(src.parent.relative_to(layout.root))
    except ValueError:
        raise SpoolIOError(f"cannot dead-letter {src}: not inside the spool {layout.root}") from None
    # Both directories without following links: a dead/ swapped for a link is refused (74), never written through.
    with SpoolDir(layout, rel) as sdir, SpoolDir(layout, "events/dead") as dead:
        write_error(dead, event_id, info)
        try:
            sdir.rename(src.name, dead, f"{event_id}.json", replace=True)
        except OSError as exc:
            raise SpoolIOError(f"cannot move {path} to dead/: {exc.strerror}") from None
        dead.fsync()
    return layout.dead / f"{event_id}.json"


def error_info(
    event_id: str, reason: str, record: Record, at: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``dead/<id>.error`` says: :func:`poetctl.transport.dead_letter_info` (kept for fsck)."""
    return dead_letter_info(event_id, reason, record, at, extra)


def write_error(dead: SpoolDir, event_id: str, info: dict[str, Any]) -> None:
    """Write ``<event_id>.error`` in ``dead`` (atomically, replacing one there): the only writer of ``.error`` files."""
    dead.write_atomic(event_id + ERROR_SUFFIX, orjson.dumps(info, option=orjson.OPT_INDENT_2))


__all__ = [
    "ERROR_SUFFIX",
    "JOURNAL",
    "Attempt",
    "Journal",
    "Record",
    "RecordStore",
    "bounded_name",
    "dead_letter",
    "error_info",
    "journal_record",
    "parse_journal",
    "quarantine",
    "read_journal",
    "record_from_json",
    "record_json",
    "save_merged",
    "stated_checksum",
    "stated_checksum_at",
    "unique_target",
    "write_error",
]
