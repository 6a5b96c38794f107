"""Priority delivery: the three classes, their shares of a fetch, and a fair pick between them.

An event's ``priority`` (envelope, optional) is ``high``, ``normal`` (absent)
or ``low``. A consumer fetching ``limit`` events while several classes wait
gives each class its share of ``limit`` (``[daemon] priority_shares``, default
high 70, normal 25, low 5, in that order of preference); what a class leaves
unused goes to the others. Every share is at least 1, so a class with work
waiting gets at least one event per fetch: low is never starved.

Priority reorders events of *different* partition keys only: a backend never
hands out an event while an earlier event of its key is still unfinished
(the memory backend checks keys; the spool keeps a high event out of the fast
lane unless its key has nothing unfinished, see backends/fs/priority.py).
"""

from __future__ import annotations

from collections.abc import Mapping

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

PRIORITIES = ("high", "normal", "low")
HIGH, NORMAL, LOW = PRIORITIES
DEFAULT_SHARES: dict[str, int] = {"high": 70, "normal": 25, "low": 5}


def class_of(event: Any) -> str:
    """The delivery class of an event (absent or unknown values are normal)."""
    p = getattr(event, "priority", None)
    return p if p in (HIGH, LOW) else NORMAL


def check_shares(value: Any) -> dict[str, int]:
    """``[daemon] priority_shares`` normalised; ValueError unless a table of high/normal/low -> 1..1000."""
    if not isinstance(value, Mapping) or not value or not set(value) <= set(PRIORITIES):
        raise ValueError("a table of high, normal, low -> shares")
    out = dict(DEFAULT_SHARES)
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
            raise ValueError("shares are integers from 1 to 1000")
        out[k] = v
    return out


def split(limit: int, waiting: Mapping[str, int], shares: Mapping[str, int] | None = None) -> dict[str, int]:
    """How many of ``limit`` each class gets, given how many of each are ``waiting``.

    Each waiting class first gets its share (at least 1), capped by what it
    has; the rest goes in order high, normal, low. The total is
    ``min(limit, sum(waiting))``.
    """
    shares = shares or DEFAULT_SHARES
    live = [c for c in PRIORITIES if waiting.get(c, 0) > 0]
    out = dict.fromkeys(PRIORITIES, 0)
    if not live or limit <= 0:
        return out
    total = sum(shares[c] for c in live)
    left = limit
    for c in live:
        n = min(waiting[c], max(1, limit * shares[c] // total), left)
        out[c] = n
        left -= n
    for c in live:
        if left <= 0:
            break
        extra = min(waiting[c] - out[c], left)
        out[c] += extra
        left -= extra
    return out


__all__ = ["DEFAULT_SHARES", "HIGH", "LOW", "NORMAL", "PRIORITIES", "check_shares", "class_of", "split"]
