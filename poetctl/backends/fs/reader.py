"""Reading events back: every reader verifies what it reads.

:func:`load_event` is the one place a spool file becomes an :class:`Event`.
It refuses anything that is not a regular file, not whole JSON, not matching
its checksum or its schemas, and says why, so callers can quarantine it.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ... import stdjson
from ...errors import InvalidData, PoetError
from ...event import CHECKSUM_PREFIX, MAX_DEPTH, Event, canonical, check_depth, checksum_member_span, checksum_of
from ...ids import EVENT_ID_RE
from ...schemas import SchemaRegistry
from ...strictjson import find_inexact, surely_exact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MISSING: Any = object()


def _plain_sha256() -> Callable[[bytes], Any]:
    """The standard library's own SHA-256 (no OpenSSL to load for a few events), else hashlib's."""
    for name in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    from hashlib import sha256

    return sha256


_std_sha256 = _plain_sha256()
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
    # Once orjson is imported (the daemon) it is the cheaper parser; before (a short reader), json.
    d = None if stdjson.orjson_loaded() else _sound_by_stdlib(data)
    if d is None:
        d = _parsed(data, where)
    try:
        if registry is not None:
            registry.check_envelope(d, where, checksum_verified=True)
        elif not isinstance(d.get("id"), str) or not EVENT_ID_RE.match(d["id"]):
            raise InvalidData("bad id")
    except InvalidData as exc:
        raise CorruptEvent("bad_envelope", exc.message, where=where) from None
    if expected_id is not None and d["id"] != expected_id:
        raise CorruptEvent("wrong_name", f"file name says {expected_id!r} but the event id is {d['id']!r}", where=where)
    if registry is not None and validate_payload:
        try:
            registry.validate_payload(d["type"], d["payload"], where, prefix="$.payload")
        except InvalidData as exc:
            reason = "unknown_type" if "unknown event type" in exc.message else "bad_schema"
            raise CorruptEvent(reason, exc.message, where=where) from None
    return Event.from_dict(d)


def _parsed(data: bytes, where: str | None) -> dict[str, Any]:
    """The document as orjson reads it, its exactness, depth and checksum verified."""
    import orjson

    try:
        d: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "depth limit" in msg or "recursion" in msg.lower():  # orjson stops reading at 1,024 levels
            msg = f"JSON nested deeper than {MAX_DEPTH} levels; expected a flatter document ({msg})"
        elif "infinity" in msg:  # an integer too wide even for a float: the slow parse names its path
            msg = find_inexact(data) or msg
        raise CorruptEvent("bad_json", msg, where=where) from None
    if type(d) is not dict:
        raise CorruptEvent("bad_json", "expected a JSON object", where=where)
    # Depth before anything recursive: the checksum re-serialises, and orjson gives up
    # past 254 levels. Nesting deeper than the limit takes more opening brackets than
    # that; counting bytes (brackets inside strings included, so never too few) is far
    # cheaper than the walk. The payload may nest MAX_DEPTH levels inside the envelope.
    if more_openers(data, MAX_DEPTH):
        try:
            check_depth(d, limit=MAX_DEPTH + 1)
        except InvalidData as exc:
            raise CorruptEvent("bad_json", exc.message, where=where) from None
    # The checksum covers the canonical form of the rest; the same bytes serve the exactness test.
    stated = d.pop("checksum", _MISSING)
    try:
        canon = canonical(d)
    except InvalidData as exc:  # not expected from what orjson parsed, but never a crash
        raise CorruptEvent("bad_json", exc.message, where=where) from None
    if stated is _MISSING:
        omitted = 0
    else:
        d["checksum"] = stated
        omitted = 1 + (stated.count(":") if type(stated) is str else orjson.dumps(stated).count(b":"))
    # Duplicate keys and integers beyond 64 bits, which orjson resolved silently. What the builder
    # stores is the canonical bytes with the checksum member in its sorted place, which hold neither:
    # a comparison proves it without counting (a small file is counted: that costs less).
    canonical_file = len(data) >= _FIND_FROM and type(stated) is str and stored_canonical(data, canon, stated)
    if not canonical_file and not surely_exact(data, canon, omitted):
        problem = find_inexact(data)
        if problem is not None:
            raise CorruptEvent("bad_json", problem, where=where)
    if type(stated) is not str or stated != checksum_of(canon):
        shown = None if stated is _MISSING else stated
        raise CorruptEvent("bad_checksum", f"checksum {shown!r} does not match the content", where=where)
    doc: dict[str, Any] = d  # typed: orjson.loads returns Any
    return doc


_FIND_FROM = 2048  # bytes from which finding beats counting (measured: 1 us vs 0.6 us at 400 bytes, 11 us at 15 KiB)


def more_openers(data: bytes, limit: int) -> bool:
    """True if ``data`` holds more than ``limit`` bytes ``{`` and ``[`` together.

    The same verdict as counting both, but by memchr-driven ``find``: an event
    has a handful of brackets and ~15 KiB of other bytes, which ``bytes.count``
    reads one at a time (twice). At most ``limit + 1`` finds; a small file is counted (fewer calls).
    """
    if len(data) < _FIND_FROM:
        return data.count(b"{") + data.count(b"[") > limit
    n = 0
    for ch in (b"{", b"["):
        i = data.find(ch)
        while i >= 0:
            n += 1
            if n > limit:
                return True
            i = data.find(ch, i + 1)
    return False


def stored_canonical(data: bytes, canon: bytes, stated: str) -> bool:
    """True if ``data`` is exactly ``canon`` with the member ``"checksum": stated`` in it (and a final newline).

    Then ``data`` is orjson's own compact, key-sorted serialisation of what it
    parses to plus that one member, so it cannot hold a duplicate key (the
    serialisation has none, and a second checksum member would be left in the
    rest), an integer beyond 64 bits (read as a float, it would be written
    back in exponent form) or an escaped colon (orjson writes none): what
    :func:`~poetctl.strictjson.surely_exact` counts colons to rule out. A hash
    match alone would not prove that (a hand-made line with a duplicate key
    can hash right). Costs a find and a comparison.

    The same verdict as ``without_checksum_member(data, stated) == canon``, without
    building the spliced copy: the two pieces either side of the member are
    compared with ``canon`` in place (two 15 KiB copies and frees per large event).
    """
    span = checksum_member_span(data, stated)
    if span is None:
        return False
    head, tail = span  # the rest is data[:head] + data[tail:]
    end = len(data)
    # without_checksum_member drops one final newline of the rest: the tail's, or the head's if no tail.
    if tail < end:
        if data[end - 1] == 0x0A:
            end -= 1
    elif data[head - 1 : head] == b"\n":
        head -= 1
    if head + end - tail != len(canon):
        return False
    view = memoryview(data)
    return canon.startswith(view[:head]) and canon.endswith(view[tail:end])


def _sound_by_stdlib(data: bytes) -> dict[str, Any] | None:
    """The document, when the standard library proves it sound as :func:`_parsed` would; else None.

    For a process that has not imported orjson (``tail``, ``correlate``, reading a
    few events): the checksum must match the canonical bytes made by
    :func:`poetctl.stdjson.canonical`, which are orjson's own whenever it returns
    them, and the colon count must rule out duplicate keys (:func:`surely_exact`,
    sound for the same bytes). Then orjson reads the same document and
    :func:`_parsed` passes it. Anything else (None) goes to :func:`_parsed`,
    which gives the verdict and its message.
    """
    if more_openers(data, MAX_DEPTH):
        return None  # as deep as the limit allows, perhaps deeper: the careful path
    try:
        d = json.loads(data.decode())  # strictly UTF-8, as orjson (json.loads(bytes) would guess UTF-16)
    except ValueError:  # UnicodeDecodeError too
        return None
    if type(d) is not dict:
        return None
    stated = d.pop("checksum", None)
    if type(stated) is not str:
        return None
    canon = stdjson.canonical(d)
    if canon is None or stated != CHECKSUM_PREFIX + _std_sha256(canon).hexdigest():
        return None
    if not surely_exact(data, canon, 1 + stated.count(":")):
        return None
    d["checksum"] = stated
    return d


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
