"""The selectors of replay, dead retry and dead purge: command-line criteria -> a :class:`~poetctl.transport.Query`.

Every given criterion must hold. Finding the events on the spool (listings, the
index, reading and verifying each file) is the filesystem backend's
(:mod:`poetctl.backends.fs.selection`); its names are still importable from here
for callers not moved yet.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..errors import InvalidData, UsageError
from ..ids import EVENT_ID_RE
from ..timeparse import parse_time
from ..topics import validate_pattern
from ..transport import Query

if TYPE_CHECKING:
    from ..backends.fs.selection import Candidate, candidates, missing_ids, open_index, resolve, state_dir

SOURCE_STATES = ("processed", "dead")
Damaged = Callable[[Path, str], None]


@dataclass(slots=True)
class Criteria:
    """The selector options as given on the command line (strings, unparsed)."""

    since: str | None = None
    until: str | None = None
    types: Sequence[str] = ()
    topics: Sequence[str] = ()
    correlation_id: str | None = None
    ids: Sequence[str] = ()

    def empty(self) -> bool:
        return not (self.since or self.until or self.types or self.topics or self.correlation_id or self.ids)


def read_ids(values: Sequence[str], stdin: IO[bytes] | None = None) -> list[str]:
    """Expand ``--id`` values: ``-`` reads ids from stdin, one per line or word.

    Lines that are JSON objects contribute their ``id`` (so the JSON lines of
    ``dead list`` or ``tail`` can be piped in). Order is kept, duplicates are
    dropped. Raises :class:`UsageError` for a bad id argument and
    :class:`InvalidData` naming ``<stdin>:LINE`` for a bad line.
    """
    out: list[str] = []
    for v in values:
        if v == "-":
            data = (stdin or sys.stdin.buffer).read()
            for lineno, line in enumerate(data.splitlines(), 1):
                s = line.strip()
                if not s or s.startswith(b"#"):
                    continue
                if s.startswith(b"{"):
                    try:
                        obj = orjson.loads(s)
                    except orjson.JSONDecodeError as exc:
                        raise InvalidData(f"invalid JSON: {exc}", where=f"<stdin>:{lineno}") from None
                    eid = obj.get("id") if isinstance(obj, dict) else None
                    if not isinstance(eid, str) or not EVENT_ID_RE.match(eid):
                        raise InvalidData(f"$.id: expected an event id, got {eid!r}", where=f"<stdin>:{lineno}")
                    out.append(eid)
                    continue
                for word in s.decode("utf-8", "replace").split():
                    if not EVENT_ID_RE.match(word):
                        raise InvalidData(
                            f"{word!r} is not an event id (expected {EVENT_ID_RE.pattern})", where=f"<stdin>:{lineno}"
                        )
                    out.append(word)
        else:
            if not EVENT_ID_RE.match(v):
                raise UsageError(f"--id {v!r}: not an event id (expected {EVENT_ID_RE.pattern}, or - for stdin)")
            out.append(v)
    return list(dict.fromkeys(out))


def make_selector(c: Criteria, stdin: IO[bytes] | None = None) -> Query:
    """Parse and check the criteria; raises :class:`UsageError` (2) for bad values."""
    since = parse_time(c.since, option="--since") if c.since else None
    until = parse_time(c.until, option="--until") if c.until else None
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be earlier than --until")
    topics = [validate_pattern(t) for t in c.topics]
    ids = read_ids(c.ids, stdin) if c.ids else []
    if c.ids and not ids:
        raise UsageError("--id -: no ids on stdin")
    return Query(topics=topics, types=list(c.types), ids=ids, correlation_id=c.correlation_id, since=since, until=until)


def check_state(state: str) -> str:
    if state not in SOURCE_STATES:
        raise UsageError(f"--from {state!r}: expected one of {', '.join(SOURCE_STATES)}")
    return state


_MOVED = ("Candidate", "candidates", "missing_ids", "open_index", "resolve", "state_dir")


def __getattr__(name: str) -> Any:
    """The spool-reading names moved to :mod:`poetctl.backends.fs.selection` (loaded on first use)."""
    if name in _MOVED:
        from ..backends.fs import selection

        return getattr(selection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SOURCE_STATES",
    "Candidate",
    "Criteria",
    "Damaged",
    "candidates",
    "check_state",
    "make_selector",
    "missing_ids",
    "open_index",
    "read_ids",
    "resolve",
    "state_dir",
]
