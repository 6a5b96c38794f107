"""The quarantine, ``events/corrupt/``: list what is there, read it, and put fixed files back.

A quarantined file ``corrupt/<name>`` comes with ``corrupt/<name>.reason``, a
JSON object written by :func:`poetctl.backends.fs.journal.quarantine`. Fields read
here: ``reason`` (a code such as ``bad_checksum``), ``detail``, ``at`` (unix
time), ``from`` (the spool directory it came from), ``name`` (its original
name, which may differ from ``<name>`` when that was too long). Unknown fields
are ignored and a missing, unreadable or malformed ``.reason`` is reported
as such, never fatal. ``X.reason`` is taken as the reason of ``X`` whenever
``X`` exists; a ``.reason`` without its file (e.g. left by a crash) is listed
as ``orphan_reason``, so nothing in the directory is hidden.

:func:`requeue` applies the daemon's own checks (:func:`poetctl.backends.fs.reader.read_bytes`
and :func:`~poetctl.backends.fs.reader.decode_event`: regular file, size, JSON,
checksum, envelope, payload schema) and moves a valid file to
``pending/<id>.json`` with a rename that never replaces, under the same lock
keyed emits hold, and only if the id is nowhere else in the spool. All work
goes through :class:`~poetctl.backends.fs.safefs.SpoolDir` descriptors: no link is
followed and nothing outside the spool is touched.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import orjson

from ...errors import SpoolIOError
from ...schemas import SchemaRegistry
from . import safefs
from .corrupt_names import REASON_SUFFIX, is_reason_of_present_file, quarantined, visible
from .layout import FILE_MODE, SUFFIX, SpoolLayout
from .reader import READ_FLAGS, CorruptEvent, decode_event, read_bytes
from .safefs import SpoolDir, open_dir
from .writer import spool_lock

CORRUPT = "events/corrupt"
MAX_REASON_BYTES = 64 * 1024
ORPHAN = "orphan_reason"


@dataclass(slots=True)
class Quarantined:
    """One entry of corrupt/ and what its ``.reason`` says (None where it says nothing usable)."""

    name: str
    kind: str  # file, symlink, directory, other
    size: int | None
    reason: str | None = None
    detail: str | None = None
    at: float | None = None
    origin: str | None = None
    original_name: str | None = None
    reason_file: str | None = None
    reason_error: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reason": self.reason,
            "detail": self.detail,
            "at": self.at,
            "from": self.origin,
            "original_name": self.original_name,
            "kind": self.kind,
            "size": self.size,
            "reason_file": self.reason_file,
            "reason_error": self.reason_error,
        }


def open_corrupt(layout: SpoolLayout) -> SpoolDir | None:
    """corrupt/ opened without following links (None if absent; SpoolIOError if linked)."""
    return open_dir(layout, CORRUPT)


def _kind(st: os.stat_result) -> str:
    m = st.st_mode
    return "file" if stat.S_ISREG(m) else "symlink" if stat.S_ISLNK(m) else "directory" if stat.S_ISDIR(m) else "other"


def _names(d: SpoolDir) -> set[str]:
    return visible(e.name for e in d.entries())


def _read_reason(d: SpoolDir, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed ``.reason`` object, or None and why not."""
    try:
        data = read_bytes(name, MAX_REASON_BYTES, dir_fd=d.fd, where=name)
        doc = orjson.loads(data)
    except FileNotFoundError:
        return None, "gone"
    except CorruptEvent as exc:
        return None, f"{exc.reason}: {exc.detail}"
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(doc, dict):
        return None, "not a JSON object"
    return doc, None


def _fill(q: Quarantined, doc: dict[str, Any]) -> None:
    def text(key: str) -> str | None:
        v = doc.get(key)
        return v if isinstance(v, str) else None

    q.reason = text("reason")
    q.detail = text("detail")
    at = doc.get("at")
    q.at = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
    q.origin = text("from")
    q.original_name = text("name")


def _entry(d: SpoolDir, name: str, names: set[str]) -> Quarantined | None:
    try:
        st = d.lstat(name)
    except FileNotFoundError:
        return None
    q = Quarantined(name, _kind(st), st.st_size if stat.S_ISREG(st.st_mode) else None)
    rname = name + REASON_SUFFIX
    if rname in names:
        q.reason_file = rname
        doc, why = _read_reason(d, rname)
        if doc is None:
            q.reason_error = why
        else:
            _fill(q, doc)
    elif name.endswith(REASON_SUFFIX):
        doc, _ = _read_reason(d, name)
        if doc is not None and isinstance(doc.get("reason"), str):
            q.reason = ORPHAN
            q.detail = f"the reason record of {name[: -len(REASON_SUFFIX)]!r}, which is no longer in corrupt/"
    return q


def entries(layout: SpoolLayout) -> list[Quarantined]:
    """Every quarantined file (reason records paired with their file), oldest first."""
    d = open_corrupt(layout)
    if d is None:
        return []
    with d:
        names = _names(d)
        out = [q for n in quarantined(names) if (q := _entry(d, n, names)) is not None]
    out.sort(key=lambda q: (q.at is None, q.at or 0.0, q.name))
    return out


def find(layout: SpoolLayout, name: str) -> Quarantined | None:
    """The entry called ``name`` (None if there is none, or if ``name`` is another file's reason record)."""
    d = open_corrupt(layout)
    if d is None:
        return None
    with d:
        names = _names(d)
        if name not in names or is_reason_of_present_file(name, names):
            return None
        return _entry(d, name, names)


def open_regular(layout: SpoolLayout, name: str) -> int:
    """A read descriptor on corrupt/``name`` if it is a regular file (never through a link).

    Raises FileNotFoundError if gone and :class:`CorruptEvent` if it is not a regular file.
    """
    d = open_corrupt(layout)
    if d is None:
        raise FileNotFoundError(errno.ENOENT, "no corrupt/ directory", name)
    with d:
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=d.fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise CorruptEvent("not_regular", f"cannot open as a regular file: {exc.strerror}", where=name) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptEvent("not_regular", "not a regular file", where=name)
    return fd


def read_head(layout: SpoolLayout, name: str, limit: int) -> tuple[bytes, int]:
    """Up to ``limit`` bytes of corrupt/``name`` and its full size."""
    fd = open_regular(layout, name)
    try:
        size = os.fstat(fd).st_size
        chunks: list[bytes] = []
        total = 0
        while total < limit:
            more = os.read(fd, min(1 << 16, limit - total))
            if not more:
                break
            chunks.append(more)
            total += len(more)
        return b"".join(chunks), size
    except OSError as exc:
        raise SpoolIOError(f"cannot read {layout.corrupt / name}: {exc.strerror}") from None
    finally:
        os.close(fd)


@dataclass(slots=True)
class Outcome:
    """What requeue did (or would do) with one quarantined file."""

    name: str
    status: str  # requeued, would_requeue, invalid, exists, missing
    id: str | None = None
    reason: str | None = None
    detail: str | None = None

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "id": self.id, "reason": self.reason, "detail": self.detail}


def requeue(
    layout: SpoolLayout,
    names: Iterable[str] | None,
    registry: SchemaRegistry,
    max_bytes: int,
    *,
    validate_payload: bool = True,
    dry_run: bool = False,
    warn: Callable[[str], None] = lambda _m: None,
) -> list[Outcome]:
    """Validate each named quarantined file (None: every one) and move the valid ones to pending/.

    A valid file becomes ``pending/<id>.json`` (never replacing anything) and
    its ``.reason`` is removed. A file that is still invalid stays, and its
    ``.reason`` gets the new reason and detail (the original fields are kept).
    A valid file whose id is already in pending, in flight, processed or dead
    stays too (``exists``): requeueing it would handle the event twice. With
    ``dry_run`` nothing is written and no lock is taken.
    """
    d = open_corrupt(layout)
    if d is None:
        return [Outcome(n, "missing", detail="there is no events/corrupt directory") for n in names or ()]
    with ExitStack() as stack:
        stack.enter_context(d)
        # Keyed emits check "is this id anywhere?" and publish under this lock; so must we.
        stack.enter_context(nullcontext() if dry_run else spool_lock(layout, "emit"))
        present = _names(d)
        todo = quarantined(present) if names is None else list(names)
        out = [_requeue_one(layout, d, n, present, registry, max_bytes, validate_payload, dry_run, warn) for n in todo]
        # --all: a reason record without its file is not an event; leave it out of the report.
        return [o for o in out if names is not None or o.reason != ORPHAN]


def _requeue_one(
    layout: SpoolLayout,
    d: SpoolDir,
    name: str,
    present: set[str],
    registry: SchemaRegistry,
    max_bytes: int,
    validate_payload: bool,
    dry_run: bool,
    warn: Callable[[str], None],
) -> Outcome:
    q = _entry(d, name, present) if name in present and not is_reason_of_present_file(name, present) else None
    if q is None:
        return Outcome(name, "missing", detail="no such quarantined file in events/corrupt")
    if q.reason == ORPHAN:
        return Outcome(name, "invalid", reason=ORPHAN, detail=q.detail)
    where = f"{CORRUPT}/{name}"
    try:
        data = read_bytes(name, max_bytes, dir_fd=d.fd, where=where)
        event = decode_event(data, registry, where=where, validate_payload=validate_payload)
    except FileNotFoundError:
        return Outcome(name, "missing", detail="it went away meanwhile")
    except CorruptEvent as exc:
        if not dry_run:
            _update_reason(d, name, exc.reason, exc.detail, warn)
        return Outcome(name, "invalid", reason=exc.reason, detail=exc.detail)
    target = event.id + SUFFIX
    elsewhere = _located(layout, target)
    if elsewhere is not None:
        return Outcome(name, "exists", event.id, detail=f"id {event.id} is already in {elsewhere}; not requeued")
    if dry_run:
        return Outcome(name, "would_requeue", event.id)
    with SpoolDir(layout, "events/pending") as pending:
        try:
            safefs.rename_noreplace_at(d.fd, name, pending.fd, target)
        except FileExistsError:
            return Outcome(name, "exists", event.id, detail=f"events/pending/{target} exists; not requeued")
        except FileNotFoundError:
            return Outcome(name, "missing", detail="it went away meanwhile")
        except OSError as exc:
            raise SpoolIOError(f"cannot move {where} to events/pending/{target}: {exc.strerror}") from None
        pending.fsync()
    # The event is safe in pending/ now; a crash here leaves only an orphan reason record.
    if name + REASON_SUFFIX in present:
        d.unlink(name + REASON_SUFFIX)
    d.fsync()
    return Outcome(name, "requeued", event.id)


def _located(layout: SpoolLayout, target: str) -> str | None:
    """The spool directory (relative) already holding ``target``, looking through descriptors only."""
    rels = ["events/pending", "events/processed", "events/dead"]
    inflight = open_dir(layout, "events/inflight")
    if inflight is not None:
        with inflight:
            rels += [f"events/inflight/{e.name}" for e in inflight.entries() if e.is_dir(follow_symlinks=False)]
    for rel in rels:
        try:
            sd = SpoolDir(layout, rel)
        except FileNotFoundError:
            continue
        with sd:
            try:
                sd.lstat(target)
            except FileNotFoundError:
                continue
            return rel
    return None


def _update_reason(d: SpoolDir, name: str, reason: str, detail: str, warn: Callable[[str], None]) -> None:
    """Record the new verdict in ``name.reason``, keeping what the quarantine wrote (best effort)."""
    rname = name + REASON_SUFFIX
    doc, _ = _read_reason(d, rname)
    doc = dict(doc or {})
    doc.update({"reason": reason, "detail": detail, "rechecked_at": time.time()})
    doc.setdefault("name", name)
    tmp = f".{os.getpid()}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=d.fd)
        try:
            os.write(fd, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, rname, src_dir_fd=d.fd, dst_dir_fd=d.fd)
        d.fsync()
    except OSError as exc:
        d.unlink(tmp)
        warn(f"{CORRUPT}/{rname}: could not record the new reason: {exc.strerror}")
