"""Times on the command line: ``15m``, ``2h``, ``3d``, ``1w``, ``30s`` ago, or RFC 3339."""

from __future__ import annotations

import math
import time

from .errors import UsageError
from .ids import lazy_pattern

_REL = lazy_pattern(r"^(\d+(?:\.\d+)?)([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, option: str = "--since", now: float | None = None) -> float:
    """Unix time for ``text``: a duration back from now (``15m``) or an RFC 3339 timestamp.

    Raises :class:`UsageError` naming the option and the accepted forms.
    """
    t = text.strip()
    m = _REL.match(t)
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNITS[m[2]]
    import datetime as dt  # here, not at the top: tail and correlate show times without datetime (start-up)

    try:
        parsed = dt.datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected a duration like 15m, 2h, 3d, 1w, 30s or an RFC 3339 time "
            "like 2026-11-27T08:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise UsageError(f"{option} {text!r}: an RFC 3339 time needs a zone, e.g. Z or +01:00")
    return parsed.timestamp()


def iso(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. 2026-11-27T08:00:00.123Z.

    A time no date can show (before year 1, after year 9999, e.g. a hand-made
    1e300 already on disk) is shown as the number itself, never an error.
    """
    got = iso_or_none(ts)
    return got if got is not None else number_text(ts)


def iso_or_none(ts: float) -> str | None:
    """Like :func:`iso`, but None for a time that cannot be shown as a date (for JSON output)."""
    # What ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` gives, without
    # importing datetime (~5M instructions at start-up): the same rounding to microseconds (half
    # to even, as CPython's _PyTime_DoubleToDenominator), then milliseconds cut off, and None
    # where datetime raises (outside years 1..9999, NaN, infinities, not a number).
    # tests/test_timeparse_iso.py compares both on boundaries and random times.
    try:
        frac, whole = math.modf(ts)
        micros = round(frac * 1e6)
        if micros >= 1_000_000:
            whole, micros = whole + 1, micros - 1_000_000
        elif micros < 0:
            whole, micros = whole - 1, micros + 1_000_000
        t = time.gmtime(whole)
    except (OverflowError, ValueError, OSError, TypeError):
        return None
    if not 1 <= t.tm_year <= 9999:
        return None
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        f".{micros // 1000:03d}Z"
    )


def number_text(value: object) -> str:
    """A number as JSON writes it (``1e300``, ``253402300800``)."""
    import orjson

    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
