"""Reading events back: every reader verifies what it reads.

:func:`load_event` is the one place a spool file becomes an :class:`Event`.
It refuses anything that is not a regular file, not whole JSON, not matching
its checksum or its schemas, and says why, so callers can quarantine it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import orjson

from ..errors import InvalidData, PoetError
from ..event import MAX_DEPTH, Event, check_depth, checksum_matches
from ..ids import EVENT_ID_RE
from ..schemas import SchemaRegistry

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class CorruptEvent(PoetError):
    """A spool file that cannot be trusted as an event; ``reason`` is a short code."""

    exit_code = 65

    def __init__(self, reason: str, detail: str, *, where: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}", where=where)
        self.reason = reason
        self.detail = detail


class UnreadableEvent(CorruptEvent):
    """A file this process may not read (EACCES, EPERM) or cannot open for lack of resources.

    Reason ``unreadable``. Not the file's fault: callers that would quarantine
    a corrupt file leave this one where it is and report it.
    """

    def __init__(self, detail: str, *, where: str | None = None) -> None:
        super().__init__("unreadable", detail, where=where)


# open() errors that say nothing about the file itself.
_NOT_THE_FILE = frozenset({errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR})

FIRST_READ = 64 * 1024


def read_bytes(
    path: str | os.PathLike[str], max_bytes: int, *, dir_fd: int | None = None, where: str | None = None
) -> bytes:
    """Read a regular file without following links; raise :class:`CorruptEvent` otherwise.

    FileNotFoundError propagates (the file moved away: not corruption). A file
    this process may not open raises :class:`UnreadableEvent` (a CorruptEvent
    with reason ``unreadable`` that callers should leave in place). Events
    are small, so this is usually open + one read + close; only a file that
    fills the first read costs an fstat and more reads. With ``dir_fd``,
    ``path`` is relative to that directory (a shorter lookup for the daemon's
    hot loop) and ``where`` names the file in errors.
    """
    if where is None:
        where = str(path)
    try:
        fd = os.open(path, READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in _NOT_THE_FILE:
            raise UnreadableEvent(f"cannot open: {exc.strerror}", where=where) from None
        # ELOOP: a symlink; ENXIO and friends: not a regular file.
        raise CorruptEvent("not_regular", f"cannot open as a regular file: {exc.strerror}", where=where) from None
    try:
        data = os.read(fd, min(FIRST_READ, max_bytes + 1))
        if not data or len(data) == FIRST_READ:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptEvent("not_regular", "not a regular file", where=where)
            if data:
                chunks, total = [data], len(data)
                while total <= max_bytes:
                    more = os.read(fd, max_bytes + 1 - total)
                    if not more:
                        break
                    chunks.append(more)
                    total += len(more)
                data = b"".join(chunks)
    except OSError as exc:
        # EISDIR (a directory) and read errors.
        reason = "not_regular" if exc.errno == errno.EISDIR else "unreadable"
        raise CorruptEvent(reason, exc.strerror or str(exc), where=where) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise CorruptEvent("too_large", f"more than {max_bytes} bytes (max_event_bytes)", where=where)
    return data


def decode_event(
    data: bytes,
    registry: SchemaRegistry | None,
    *,
    where: str | None = None,
    expected_id: str | None = None,
    validate_payload: bool = True,
) -> Event:
    """Parse, verify (checksum, envelope, payload schema) and return an Event.

    Raises :class:`CorruptEvent` with reason ``bad_json``, ``bad_checksum``,
    ``bad_envelope``, ``bad_schema``, ``unknown_type`` or ``wrong_name``.
    """
    try:
        d: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptEvent("bad_json", str(exc), where=where) from None
    if not isinstance(d, dict):
        raise CorruptEvent("bad_json", "expected a JSON object", where=where)
    if not checksum_matches(d):
        raise CorruptEvent("bad_checksum", f"checksum {d.get('checksum')!r} does not match the content", where=where)
    try:
        if registry is not None:
            registry.check_envelope(d, where, checksum_verified=True)
        elif not isinstance(d.get("id"), str) or not EVENT_ID_RE.match(d["id"]):
            raise InvalidData("bad id")
    except InvalidData as exc:
        raise CorruptEvent("bad_envelope", exc.message, where=where) from None
    if expected_id is not None and d["id"] != expected_id:
        raise CorruptEvent("wrong_name", f"file name says {expected_id!r} but the event id is {d['id']!r}", where=where)
    # Nesting deeper than MAX_DEPTH takes more than MAX_DEPTH opening brackets; counting
    # bytes (brackets inside strings included, so never too few) is far cheaper than the walk.
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH:
        try:
            check_depth(d["payload"])
        except InvalidData:
            raise CorruptEvent("bad_json", f"nested deeper than {MAX_DEPTH} levels", where=where) from None
    if registry is not None and validate_payload:
        try:
            registry.validate_payload(d["type"], d["payload"], where, prefix="$.payload")
        except InvalidData as exc:
            reason = "unknown_type" if "unknown event type" in exc.message else "bad_schema"
            raise CorruptEvent(reason, exc.message, where=where) from None
    return Event.from_dict(d)


def load_event(
    path: Path,
    registry: SchemaRegistry | None,
    max_bytes: int,
    *,
    validate_payload: bool = True,
) -> Event:
    """Read and verify one event file (see :func:`read_bytes` and :func:`decode_event`)."""
    name = path.name
    expected = name[:-5] if name.endswith(".json") else None
    if expected is None or not EVENT_ID_RE.match(expected):
        raise CorruptEvent("bad_name", "expected <event id>.json", where=str(path))
    data = read_bytes(path, max_bytes)
    return decode_event(data, registry, where=str(path), expected_id=expected, validate_payload=validate_payload)
