"""``poetctl status``: counts per state, lag, daemons, throughput, and a Nagios-style check.

Fast at any size: processed/ is never listed when the index exists (its
count and the recent-throughput counts are range counts on the index's
``(state, ts)`` B-tree, read through a read-only connection that writes
nothing); only pending, in-flight, dead and corrupt - small while daemons
keep up - are listed. A directory that cannot be listed, or a heartbeat that
cannot be read for lack of permission, is an error (the caller's ``--check``
says UNKNOWN), never a count of 0.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..backends.fs.corrupt_names import quarantined, visible
from ..backends.fs.index import connect_readonly
from ..backends.fs.layout import SpoolLayout
from ..backends.fs.paths import HEARTBEATS
from ..errors import UsageError
from ..ids import time_of

WINDOWS = (("1m", 60), ("5m", 300), ("15m", 900))
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


def count_events(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def count_corrupt(directory: Path) -> int:
    """What ``poetctl corrupt list`` lists (reason records paired with their files)."""
    try:
        with os.scandir(directory) as it:
            return len(quarantined(visible(e.name for e in it)))
    except FileNotFoundError:
        return 0


def _index_figures(layout: SpoolLayout, now: float) -> dict[str, Any] | None:
    """Processed count and recent counts from the index (read-only); None if there is no usable index."""
    path = layout.root / "index" / "events.sqlite"
    if not os.path.lexists(path):
        return None
    try:
        db = connect_readonly(path, timeout=5)
    except (sqlite3.Error, OSError):
        return None  # derived data: count processed/ by listing it instead
    try:
        processed = _processed_count(db)
        lo = now - WINDOWS[-1][1]
        row = db.execute(
            "SELECT "
            + ", ".join(f"coalesce(sum(ts >= {now - s!r}), 0)" for _, s in WINDOWS)
            + " FROM events WHERE state='processed' AND ts >= ?",
            (lo,),
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return {"processed": int(processed), "recent": {k: int(v) for (k, _), v in zip(WINDOWS, row, strict=True)}}


def _heartbeats(layout: SpoolLayout, now: float, stale_after: float, lease: float) -> list[dict[str, Any]]:
    hb_dir = layout.root / HEARTBEATS
    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.scandir(hb_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for e in entries:
        if not e.name.endswith(".json") or e.name.startswith("."):
            continue
        try:
            beat = orjson.loads(Path(e.path).read_bytes())
            last = float(beat.get("last_beat", 0))
        except PermissionError:
            raise  # whether that daemon lives cannot be told: the caller reports it (status --check: UNKNOWN)
        except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError, OverflowError):
            continue  # a damaged heartbeat is skipped (fsck reports it)
        if not isinstance(beat, dict):
            continue
        owner = e.name[:-5]
        age = now - last
        # Imported here: poetctl.daemon pulls in the whole daemon (~25 ms), needless without heartbeats.
        from ..backends.fs.owner import owner_alive

        alive = owner_alive(owner, hb_dir, lease) and age <= stale_after
        beat.setdefault("owner", owner)
        beat["alive"] = alive
        beat["stale"] = not alive
        beat["age_seconds"] = round(age, 3)
        counts: dict[str, Any] = beat["counts"] if isinstance(beat.get("counts"), dict) else {}
        beat["rate_per_second"] = _rate(counts.get("processed", 0), last, beat.get("started_at"))
        out.append(beat)
    return out


def _rate(processed: Any, last: float, started: Any) -> float:
    """Events per second over a daemon's life; 0.0 when the heartbeat's numbers make no sense."""
    try:
        up = last - float(started if started else last)
        rate = float(processed) / up if up > 0 else 0.0
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return round(rate, 3) if math.isfinite(rate) else 0.0


def collect(
    layout: SpoolLayout, *, lease_seconds: float = 30.0, stale_after: float | None = None, now: float | None = None
) -> dict[str, Any]:
    """The status document (README: poetctl status)."""
    now = time.time() if now is None else now
    stale_after = lease_seconds if stale_after is None else stale_after
    pending = 0
    oldest: float | None = None
    try:
        with os.scandir(layout.pending) as it:
            for e in it:
                if not e.name.endswith(".json") or e.name.startswith("."):
                    continue
                pending += 1
                ms = time_of(e.name[:-5])
                if ms is None:
                    try:
                        ms = e.stat(follow_symlinks=False).st_mtime_ns // 1_000_000
                    except OSError:
                        continue
                if oldest is None or ms / 1000 < oldest:
                    oldest = ms / 1000
    except FileNotFoundError:
        pass
    idx = _index_figures(layout, now)
    counts = {
        "pending": pending,
        "inflight": sum(count_events(d) for d in layout.inflight_dirs()),
        "processed": idx["processed"] if idx is not None else count_events(layout.processed),
        "dead": count_events(layout.dead),
        "corrupt": count_corrupt(layout.corrupt),
    }
    daemons = _heartbeats(layout, now, stale_after, lease_seconds)
    lag = round(max(0.0, now - oldest), 3) if oldest is not None else None
    alive = [d for d in daemons if d["alive"]]
    return {
        "spool": str(layout.root),
        "counts": counts,
        "counts_source": {"processed": "index" if idx is not None else "listing"},
        "oldest_pending_age_seconds": lag,
        "lag_seconds": lag if lag is not None else 0.0,
        "daemons": daemons,
        "daemons_alive": len(alive),
        "daemons_stale": len(daemons) - len(alive),
        "throughput": {
            # Handled events whose event time falls in the window (the index keeps event times).
            "processed_recent": idx["recent"] if idx is not None else None,
            "source": "index" if idx is not None else None,
            "daemons_per_second": round(sum(d["rate_per_second"] for d in alive), 3),
        },
        "at": round(now, 3),
    }


@dataclass(slots=True)
class Thresholds:
    warn_lag: float = 60.0
    max_lag: float = 300.0
    max_dead: int = 0
    max_corrupt: int = 0
    max_stale: int = 0
    min_daemons: int = 0


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


def _processed_count(db: sqlite3.Connection) -> int:
    """Processed rows: a count over the (state, ts) index, ~0.1 s per million rows."""
    (n,) = db.execute("SELECT count(*) FROM events WHERE state='processed'").fetchone()
    return int(n)
