"""``poetctl top``: one snapshot of the system from the spool, and its live rendering.

Sources (all read-only): the ``status`` document (counts, lag, daemons with
their heartbeats), each daemon's stats file (``run/stats``: handle and emit
rates from its ring of totals, per-handler latency percentiles from its
histograms, error counts) and the newest dead letters. A daemon without a
stats file (an older poetctl) still shows, with its lifetime rate from the
heartbeat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .metrics import DURATION_BUCKETS

RATE_WINDOW = 10.0  # seconds of a daemon's ring a rate is taken over
DEAD_SHOWN = 5


def quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """Prometheus' histogram_quantile over non-cumulative counts (last: above every bound); None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    run = 0
    lo = 0.0
    for i, n in enumerate(counts):
        hi = bounds[i] if i < len(bounds) else None
        if run + n >= rank and n > 0:
            if hi is None:
                return bounds[-1]  # above the last bound: its value is all we know
            return lo + (hi - lo) * (rank - run) / n
        run += n
        lo = hi if hi is not None else lo
    return bounds[-1]


def _ring_rates(ring: list[list[float]]) -> dict[str, float] | None:
    """Per-second rates of (handled, emitted, errors, dead, retried) over the last RATE_WINDOW seconds."""
    if len(ring) < 2:
        return None
    last = ring[-1]
    first = ring[0]
    for row in ring:
        if row[0] >= last[0] - RATE_WINDOW:
            break
        first = row
    dt = last[0] - first[0]
    if dt <= 0:
        return None
    keys = ("handled", "emitted", "errors", "dead", "retried")
    return {k: round((last[i + 1] - first[i + 1]) / dt, 2) for i, k in enumerate(keys)}


def _handlers(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, h in (stats.get("histograms") or {}).items():
        metric, _, handler = str(key).partition("|")
        if metric != "poetctl_handler_duration_seconds" or not isinstance(h, dict):
            continue
        counts = [int(c) for c in h.get("counts", [])]
        if len(counts) != len(DURATION_BUCKETS) + 1:
            continue
        out[handler] = {
            "runs": sum(counts),
            "p50_ms": _ms(quantile(0.5, DURATION_BUCKETS, counts)),
            "p95_ms": _ms(quantile(0.95, DURATION_BUCKETS, counts)),
            "p99_ms": _ms(quantile(0.99, DURATION_BUCKETS, counts)),
            "errors": 0,
        }
    for row in stats.get("counters") or []:
        if isinstance(row, list) and len(row) == 3 and row[0] == "poetctl_handler_errors":
            out.setdefault(str(row[1]), {"runs": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "errors": 0})
            out[str(row[1])]["errors"] += int(row[2])
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def _merge_handlers(into: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]) -> None:
    """Several daemons: runs and errors add up; the percentiles shown are the busiest daemon's."""
    for name, h in more.items():
        cur = into.get(name)
        if cur is None or h["runs"] > cur["runs"]:
            into[name] = {
                **h,
                "runs": h["runs"] + (cur["runs"] if cur else 0),
                "errors": h["errors"] + (cur["errors"] if cur else 0),
            }
        else:
            cur["runs"] += h["runs"]
            cur["errors"] += h["errors"]


def recent_dead(root: Path, n: int = DEAD_SHOWN) -> list[dict[str, Any]]:
    """The ``n`` most recently dead-lettered events (by their ``.error`` file's time)."""
    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.replay import read_error
    from ..backends.fs.safefs import open_dir

    layout = SpoolLayout(root)
    d = open_dir(layout, "events/dead")
    if d is None:
        return []
    with d:
        stamped = []
        for e in d.entries():
            if e.name.endswith(".error") and not e.name.startswith("."):
                try:
                    stamped.append((e.stat(follow_symlinks=False).st_mtime, e.name[:-6]))
                except OSError:
                    continue
        newest = sorted(stamped, reverse=True)[:n]
        rows = []
        for _, eid in newest:
            err = read_error(layout, eid, d) or {}
            rows.append(
                {
                    "id": eid,
                    "reason": err.get("reason"),
                    "handler": err.get("handler"),
                    "attempts": err.get("attempts"),
                    "error": err.get("error"),
                    "dead_at": err.get("dead_at"),
                }
            )
    return rows


def snapshot(
    root: Path, lease_seconds: float = 30.0, now: float | None = None, prev: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything ``top`` shows, as plain data (``top --once -o json`` prints it).

    ``rates``: ``handled``, ``errors``, ``dead``, ``retried`` and ``emitted``
    (follow-ups, alerts, health) summed over live daemons; ``added`` is how
    fast the spool grew by anyone's emits since ``prev`` (None without one).
    """
    from ..backends.fs.obs_stats import read_all
    from .backlog import spool_figures

    now = time.time() if now is None else now
    doc = spool_figures(root, lease_seconds, now)
    stats = {(str(s.get("host")), s.get("pid")): s for s in read_all(root)}
    daemons = []
    handlers: dict[str, dict[str, Any]] = {}
    totals = {"handled": 0.0, "emitted": 0.0, "errors": 0.0, "dead": 0.0, "retried": 0.0}
    for beat in doc["daemons"]:
        st = stats.get((str(beat.get("host")), beat.get("pid")))
        rates = _ring_rates(st.get("ring") or []) if st else None
        if rates is None:
            rates = {"handled": float(beat.get("rate_per_second") or 0.0)}  # lifetime rate from the heartbeat
        if beat.get("alive"):
            for k, v in rates.items():
                totals[k] += v
        if st:
            _merge_handlers(handlers, _handlers(st))
        counts = beat.get("counts") if isinstance(beat.get("counts"), dict) else {}
        daemons.append(
            {
                "owner": beat.get("owner"),
                "pid": beat.get("pid"),
                "alive": bool(beat.get("alive")),
                "heartbeat_age_seconds": beat.get("age_seconds"),
                "inflight": beat.get("inflight"),
                "processed": counts.get("processed"),
                "dead": counts.get("dead"),
                "rates": rates,
            }
        )
    return {
        "spool": doc["spool"],
        "at": round(now, 3),
        "counts": doc["counts"],
        "lag_seconds": doc["lag_seconds"],
        "rates": {**{k: round(v, 2) for k, v in totals.items()}, "added": _added(doc["counts"], now, prev)},
        "handlers": dict(sorted(handlers.items())),
        "daemons": daemons,
        "recent_dead": recent_dead(root),
        "fsck": doc.get("fsck"),
        "filesystem": doc.get("filesystem"),
    }


def _added(counts: dict[str, int], now: float, prev: dict[str, Any] | None) -> float | None:
    """Events added to the spool per second since ``prev`` (every state counted; prune makes it 0)."""
    then = float(prev["at"]) if prev is not None else now
    if prev is None or now <= then:
        return None
    grew = sum(counts.values()) - sum(int(v) for v in prev["counts"].values())
    return round(max(0, grew) / (now - then), 2)


def render(snap: dict[str, Any]) -> Any:
    """A rich renderable of a snapshot (tables; values cleaned for the terminal)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ..safetext import clean

    r = snap["rates"]
    c = snap["counts"]
    head = Text.assemble(
        ("poetctl top", "bold"),
        f"  {clean(snap['spool'])}   ",
        (f"handle {r['handled']:.1f}/s", "green"),
        "  ",
        (f"emit {r['added'] if r['added'] is not None else r['emitted']:.1f}/s", "cyan"),
        "  ",
        (f"errors {r['errors']:.1f}/s", "red" if r["errors"] else ""),
        f"   lag {snap['lag_seconds']:.1f}s   pending {c['pending']}  inflight {c['inflight']}"
        f"  processed {c['processed']}  dead {c['dead']}  corrupt {c['corrupt']}",
    )
    hs = Table(title="handlers", expand=True)
    for col in ("handler", "runs", "p50 ms", "p95 ms", "p99 ms", "errors"):
        hs.add_column(col, justify="left" if col == "handler" else "right")
    for name, h in snap["handlers"].items():
        hs.add_row(
            clean(name), str(h["runs"]), _num(h["p50_ms"]), _num(h["p95_ms"]), _num(h["p99_ms"]), str(h["errors"])
        )
    ds = Table(title="daemons", expand=True)
    for col in ("owner", "alive", "heartbeat", "inflight", "processed", "dead", "handle/s"):
        ds.add_column(col, justify="left" if col == "owner" else "right")
    for d in snap["daemons"]:
        ds.add_row(
            clean(d["owner"]),
            "yes" if d["alive"] else "STALE",
            f"{d['heartbeat_age_seconds']:.1f}s ago" if d["heartbeat_age_seconds"] is not None else "-",
            str(d["inflight"]),
            str(d["processed"]),
            str(d["dead"]),
            f"{d['rates'].get('handled', 0.0):.1f}",
        )
    dl = Table(title="recent dead letters", expand=True)
    for col in ("id", "reason", "handler", "attempts", "error"):
        dl.add_column(col)
    for x in snap["recent_dead"]:
        dl.add_row(
            *(clean(x[k]) if x[k] is not None else "-" for k in ("id", "reason", "handler", "attempts", "error"))
        )
    foot = Text("q or Ctrl-C quits", style="dim")
    return Group(head, hs, ds, dl, foot)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def live(root: Path, lease_seconds: float, interval: float = 1.0) -> None:
    """The spool's live view (see :func:`live_view`)."""
    live_view(lambda prev: snapshot(root, lease_seconds, prev=prev), interval)


def live_view(take: Any, interval: float = 1.0) -> None:
    """Refresh ``take(previous snapshot)`` every ``interval`` seconds until ``q`` (or Ctrl-C); stdin: a terminal."""
    import select
    import sys
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    console = Console()
    try:
        tty.setcbreak(fd)
        snap = take(None)
        with Live(render(snap), console=console, screen=True, auto_refresh=False) as view:
            while True:
                ready, _, _ = select.select([fd], [], [], interval)
                if ready:
                    ch = os.read(fd, 1)
                    if ch in (b"q", b"Q", b"\x03"):
                        return
                snap = take(snap)
                view.update(render(snap), refresh=True)
    except KeyboardInterrupt:
        return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


__all__ = ["live", "live_view", "quantile", "recent_dead", "render", "snapshot"]
