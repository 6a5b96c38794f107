"""``poetctl status``: counts per state, lag, daemons, throughput, and a Nagios-style check.

The document is built from a :class:`StatusSource`: the filesystem spool's
(:class:`poetctl.backends.fs.status.FsStatus`: fast at any size, heartbeats,
throughput from the index) or any transport's (:class:`TransportStatus`:
``transport.counts()`` and its oldest pending event).
"""

from __future__ import annotations

import re
import time

from ..errors import UsageError
from ..selection import Query, State

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ..transport import Transport

STATUS_STATES = (State.PENDING, State.INFLIGHT, State.PROCESSED, State.DEAD, State.CORRUPT)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def parse_duration(text: str, option: str) -> float:
    """Seconds for ``90``, ``30s``, ``5m``, ``2h``, ``1d``; UsageError otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise UsageError(f"{option} {text!r}: expected a duration like 30s, 5m, 2h or a number of seconds")
    return float(m[1]) * _UNITS[m[2]]


if TYPE_CHECKING:  # a Protocol only for the type checker: typing is not imported at run time

    class StatusSource(Protocol):
        """Where ``poetctl status`` gets its figures: the spool (:class:`poetctl.backends.fs.status.FsStatus`)
        or any transport (:class:`TransportStatus`)."""

        where: str

        def figures(self, now: float, stale_after: float, lease_seconds: float) -> dict[str, Any]:
            """``counts`` (pending, inflight, processed, dead, corrupt), ``processed_source``,
            ``oldest_pending`` (a time or None), ``recent`` (processed per window, or None), ``daemons``."""
            ...


class TransportStatus:
    """Status figures of any :class:`~poetctl.transport.Transport`: its counts and its oldest pending event.

    A backend without heartbeats reports no daemons and no recent throughput.
    """

    def __init__(self, transport: Transport, where: str) -> None:
        self.transport = transport
        self.where = where

    def figures(self, now: float, stale_after: float, lease_seconds: float) -> dict[str, Any]:
        counts = self.transport.counts()
        times = [s.event.timestamp for s in self.transport.select(Query(states=[State.PENDING])) if s.event]
        return {
            "counts": {s.value: counts.get(s, 0) for s in STATUS_STATES},
            "processed_source": "transport",
            "oldest_pending": min(times) if times else None,
            "recent": None,
            "daemons": [],
        }


def collect(
    source: StatusSource,
    *,
    lease_seconds: float = 30.0,
    stale_after: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The status document (README: poetctl status)."""
    now = time.time() if now is None else now
    stale_after = lease_seconds if stale_after is None else stale_after
    f = source.figures(now, stale_after, lease_seconds)
    oldest = f["oldest_pending"]
    daemons = f["daemons"]
    lag = round(max(0.0, now - oldest), 3) if oldest is not None else None
    alive = [d for d in daemons if d["alive"]]
    recent = f["recent"]
    return {
        "spool": source.where,
        "counts": f["counts"],
        "counts_source": {"processed": f["processed_source"]},
        "oldest_pending_age_seconds": lag,
        "lag_seconds": lag if lag is not None else 0.0,
        "daemons": daemons,
        "daemons_alive": len(alive),
        "daemons_stale": len(daemons) - len(alive),
        "throughput": {
            # Handled events whose event time falls in the window (the index keeps event times).
            "processed_recent": recent,
            "source": "index" if recent is not None else None,
            "daemons_per_second": round(sum(d["rate_per_second"] for d in alive), 3),
        },
        "at": round(now, 3),
    }


class Thresholds:
    """``status --check``'s limits (a plain class: ``status`` starts without importing dataclasses)."""

    __slots__ = ("warn_lag", "max_lag", "max_dead", "max_corrupt", "max_stale", "min_daemons")  # noqa: RUF023
    __hash__ = None  # type: ignore[assignment]  # compared by value, mutable (as the dataclass was)

    def __init__(
        self,
        warn_lag: float = 60.0,
        max_lag: float = 300.0,
        max_dead: int = 0,
        max_corrupt: int = 0,
        max_stale: int = 0,
        min_daemons: int = 0,
    ) -> None:
        self.warn_lag = warn_lag
        self.max_lag = max_lag
        self.max_dead = max_dead
        self.max_corrupt = max_corrupt
        self.max_stale = max_stale
        self.min_daemons = min_daemons

    def _values(self) -> tuple[float, ...]:
        return (self.warn_lag, self.max_lag, self.max_dead, self.max_corrupt, self.max_stale, self.min_daemons)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Thresholds) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={v!r}" for f, v in zip(self.__slots__, self._values(), strict=True))
        return f"{self.__class__.__qualname__}({inner})"


def evaluate(doc: dict[str, Any], t: Thresholds) -> dict[str, Any]:
    """Nagios-style verdict: {"code": 0|1|2, "status": "OK"|..., "reasons": [...]}."""
    reasons: list[tuple[int, str]] = []
    lag = doc["lag_seconds"]
    if lag > t.max_lag:
        reasons.append((CRITICAL, f"lag {lag:.0f}s > {t.max_lag:g}s"))
    elif lag > t.warn_lag:
        reasons.append((WARNING, f"lag {lag:.0f}s > {t.warn_lag:g}s"))
    c = doc["counts"]
    if c["dead"] > t.max_dead:
        reasons.append((WARNING, f"{c['dead']} dead letter(s) > {t.max_dead}"))
    if c["corrupt"] > t.max_corrupt:
        reasons.append((WARNING, f"{c['corrupt']} corrupt file(s) > {t.max_corrupt}"))
    if doc["daemons_stale"] > t.max_stale:
        reasons.append((WARNING, f"{doc['daemons_stale']} stale daemon(s) > {t.max_stale}"))
    if doc["daemons_alive"] < t.min_daemons:
        reasons.append((CRITICAL, f"{doc['daemons_alive']} daemon(s) alive < {t.min_daemons}"))
    code = max((r[0] for r in reasons), default=OK)
    return {
        "code": code,
        "status": LABELS[code],
        "reasons": [r[1] for r in sorted(reasons, key=lambda r: -r[0])],
        "thresholds": {
            "warn_lag": t.warn_lag,
            "max_lag": t.max_lag,
            "max_dead": t.max_dead,
            "max_corrupt": t.max_corrupt,
            "max_stale": t.max_stale,
            "min_daemons": t.min_daemons,
        },
    }


def nagios_line(doc: dict[str, Any], verdict: dict[str, Any], t: Thresholds) -> str:
    c = doc["counts"]
    text = "; ".join(verdict["reasons"]) or (
        f"lag {doc['lag_seconds']:.0f}s, {c['pending']} pending, {doc['daemons_alive']} daemon(s) alive"
    )
    perf = (
        f"lag={doc['lag_seconds']:.3f}s;{t.warn_lag:g};{t.max_lag:g} pending={c['pending']} "
        f"inflight={c['inflight']} processed={c['processed']} dead={c['dead']};{t.max_dead} "
        f"corrupt={c['corrupt']};{t.max_corrupt} daemons={doc['daemons_alive']}"
    )
    return f"POET {verdict['status']} - {text} | {perf}"
