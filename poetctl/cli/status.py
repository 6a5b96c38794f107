"""``poetctl status``: counts per state, lag and daemon heartbeats."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load


def status_cmd(output: OutputOpt = None, spool: SpoolOpt = None, config: ConfigOpt = None) -> None:
    """Show event counts per state, the age of the oldest pending event and daemon heartbeats."""
    _status(output, spool, config)


def count_events(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def collect_status(layout: Any, lease_seconds: float = 30.0) -> dict[str, Any]:
    """The status document (see README: poetctl status)."""
    import orjson

    from ..daemon.owner import owner_alive
    from ..ids import time_of

    now = time.time()
    counts = {
        "pending": 0,
        "inflight": sum(count_events(d) for d in layout.inflight_dirs()),
        "processed": count_events(layout.processed),
        "dead": count_events(layout.dead),
        "corrupt": sum(1 for n in os.listdir(layout.corrupt) if not n.endswith(".reason"))
        if layout.corrupt.is_dir() else 0,
    }
    oldest: float | None = None
    with os.scandir(layout.pending) as it:
        for e in it:
            if not e.name.endswith(".json") or e.name.startswith("."):
                continue
            counts["pending"] += 1
            ms = time_of(e.name[:-5])
            if ms is None:
                try:
                    ms = e.stat(follow_symlinks=False).st_mtime_ns // 1_000_000
                except OSError:
                    continue
            t = ms / 1000
            if oldest is None or t < oldest:
                oldest = t
    daemons = []
    hb_dir = layout.run / "daemons"
    if hb_dir.is_dir():
        for e in sorted(os.scandir(hb_dir), key=lambda e: e.name):
            if not e.name.endswith(".json") or e.name.startswith("."):
                continue
            try:
                beat = orjson.loads(Path(e.path).read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            owner = e.name[:-5]
            alive = owner_alive(owner, hb_dir, lease_seconds)
            beat["alive"] = alive
            beat["age_seconds"] = round(now - float(beat.get("last_beat", 0)), 3)
            daemons.append(beat)
    return {
        "spool": str(layout.root),
        "counts": counts,
        "oldest_pending_age_seconds": round(now - oldest, 3) if oldest is not None else None,
        "daemons": daemons,
    }


@errors_to_exit
def _status(output: str | None, spool: Path | None, config: Path | None) -> None:
    from ..spool.layout import SpoolLayout
    from .output import resolve_format, write_json, write_jsonl

    fmt = resolve_format(output)
    layout = SpoolLayout(load(spool, config).spool).require()
    doc = collect_status(layout)
    if fmt == "json":
        write_json(doc)
        return
    if fmt == "jsonl":
        write_jsonl([doc])
        return
    from .output import console, write_table

    c = doc["counts"]
    lag = doc["oldest_pending_age_seconds"]
    console().print(f"[bold]spool[/bold] {doc['spool']}   oldest pending: "
                    f"{'-' if lag is None else f'{lag:.1f}s'}")
    write_table(["state", "events"], [(k, v) for k, v in c.items()])
    if doc["daemons"]:
        write_table(
            ["daemon", "alive", "beat age", "processed", "dead", "inflight", "lag"],
            [(d["owner"], "yes" if d["alive"] else "STALE", f"{d['age_seconds']:.1f}s",
              d["counts"]["processed"], d["counts"]["dead"], d["inflight"], d["lag_seconds"])
             for d in doc["daemons"]],
        )
