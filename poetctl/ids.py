"""Identifiers: UUIDv7 generation and the strict patterns for path parts.

Anything that may become part of a filesystem path (event ids, function names,
versions, type names) must pass one of these checks first. The patterns only
admit names that start with an alphanumeric and contain no separator, so
``..``, ``/`` and hidden files are impossible by construction.
"""

from __future__ import annotations

import _thread
import os
import re
import time
from collections.abc import Callable


class _LazyPattern:
    """A regular expression compiled at its first use instead of at import.

    Each compile costs ~0.5M instructions, and a short command (``status``) imports a
    score of patterns it never uses. The first method looked up compiles the pattern and
    puts the compiled pattern's bound methods on the instance, so every later call is an
    instance-dict hit: as cheap as calling the compiled pattern itself.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)  # copy, pickle and friends probe dunders: not a first use
        compiled = re.compile(self.pattern)
        for attr in ("match", "fullmatch", "search", "finditer", "findall", "sub", "subn", "split"):
            setattr(self, attr, getattr(compiled, attr))
        return getattr(compiled, name)

    def __repr__(self) -> str:
        return f"re.compile({self.pattern!r})"


def lazy_pattern(pattern: str) -> re.Pattern[str]:
    """``re.compile(pattern)``, done at the first use (see :class:`_LazyPattern`)."""
    return _LazyPattern(pattern)  # type: ignore[return-value]  # duck-typed: the methods of a Pattern


EVENT_ID_RE = lazy_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
FUNCTION_NAME_RE = lazy_pattern(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}\Z")
VERSION_RE = lazy_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}\Z")
TYPE_RE = lazy_pattern(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")

_lock = _thread.allocate_lock()  # threading.Lock() itself, without importing threading (start-up)
_last_ms = 0
_counter = 0
# (ms, the first 15 characters of its ids: "tttttttt-tttt-7"), one tuple so threads read a matching pair.
_prefix: tuple[int, str] = (-1, "")
_COUNTER_BITS = 42  # RFC 9562 method 1: 12 bits of rand_a + 30 bits of rand_b


def _reset_after_fork() -> None:
    global _last_ms, _counter
    _last_ms = 0
    _counter = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def _first_getrandbits(k: int) -> int:
    """The first id's bits from os.urandom; random.getrandbits (imported now) for the next ones.

    A one-event ``emit`` makes one id, for which ``import random`` (~7M
    instructions) costs more than one getrandom syscall; the read-only
    commands make none.
    """
    global _getrandbits
    _getrandbits = _next_getrandbits
    return int.from_bytes(os.urandom((k + 7) // 8)) >> (-k % 8)


def _next_getrandbits(k: int) -> int:
    global _getrandbits
    import random

    _getrandbits = random.getrandbits
    return _getrandbits(k)


_getrandbits: Callable[[int], int] = _first_getrandbits


def _random32() -> int:
    """32 random bits for the tail of an id.

    Uniqueness comes from the millisecond and a counter seeded from os.urandom
    every millisecond; these bits only separate processes within one
    millisecond, so the (fork-safe, reseeded) Mersenne Twister is enough and
    costs no syscall.
    """
    return _getrandbits(32)


def uuid7() -> str:
    """Return a new UUIDv7 as a lowercase string.

    Ids from one process are strictly increasing (a 42-bit counter seeded at
    random each millisecond), so they sort in emit order as plain strings.
    """
    global _last_ms, _counter
    tail = _random32()
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            # Leave the top bit clear so a busy millisecond has room to count.
            _counter = int.from_bytes(os.urandom(6), "big") >> (48 - _COUNTER_BITS + 1)
        else:
            _counter += 1
            if _counter >> _COUNTER_BITS:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    return _format7(ms, counter >> 30, ((counter & 0x3FFFFFFF) << 32) | tail)


def _format7(ms: int, rand_a: int, rand_b: int) -> str:
    """The UUIDv7 string of (48-bit ms, 12-bit rand_a, 62-bit rand_b), RFC 9562 layout.

    The time part is formatted once per millisecond (a batch emits many ids in one).
    """
    global _prefix
    cached_ms, prefix = _prefix
    if ms != cached_ms:  # two threads may both rebuild it: the same string, no lock needed
        prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
        _prefix = (ms, prefix)
    return f"{prefix}{rand_a:03x}-{0x8000 | (rand_b >> 48):04x}-{rand_b & 0xFFFFFFFFFFFF:012x}"


def derived_id(cause_id: str, cause_time: float, handler: str, position: int) -> str:
    """Deterministic id for the ``position``-th event ``handler`` emits for a cause.

    A re-run of the same handler on the same cause yields the same ids, so the
    spool deduplicates the follow-ups instead of duplicating them. The id is a
    UUIDv8 laid out like a UUIDv7 whose time is the cause's, with the position
    in the next 12 bits: follow-ups sort next to their cause and in the order
    the handler emitted them (causal order).
    """
    import hashlib  # here: loading OpenSSL's libcrypto is a good part of a short command's start-up

    digest = int.from_bytes(hashlib.sha256(f"{cause_id}\0{handler}\0{position}".encode()).digest()[:8], "big")
    ms = max(0, int(cause_time * 1000)) & ((1 << 48) - 1)
    value = (ms << 80) | (0x8 << 76) | (min(position, 0xFFF) << 64) | (0b10 << 62) | (digest >> 2)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def time_of(event_id: str) -> int | None:
    """Milliseconds since the epoch encoded in a UUIDv7/derived id, else None."""
    if len(event_id) == 36 and event_id[14] in "78" and event_id[8] == "-":
        try:
            return int(event_id[:8] + event_id[9:13], 16)
        except ValueError:
            return None
    return None


def is_event_id(value: object) -> bool:
    return isinstance(value, str) and EVENT_ID_RE.match(value) is not None


def check_path_part(kind: str, value: object, pattern: re.Pattern[str]) -> str:
    """Return ``value`` if it is safe to use as one path component, else raise.

    Raises :class:`poetctl.errors.InvalidData` naming the kind and the pattern.
    """
    from .errors import InvalidData

    if not isinstance(value, str) or pattern.match(value) is None:
        raise InvalidData(f"{kind} {value!r} is not allowed: expected a string matching {pattern.pattern}")
    return value
