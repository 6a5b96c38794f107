"""Spool-building helpers shared by the replay, dead, prune, fsck, status, links and state tests.

Test modules import these from here, never from one another (issue 10).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poetctl import EventRouter
from poetctl.backends.fs.index import Index, row_of
from poetctl.spool import SpoolLayout

from .harness import events_dir


def uuid7_at(ts: float) -> str:
    """A UUIDv7 whose embedded time is ``ts`` (for events that look old by name)."""
    ms = int(ts * 1000)
    r = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((r >> 62) & 0xFFF) << 64) | (0b10 << 62) | (r & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def put_event(
    sp: Path,
    state: str,
    ts: float | None = None,
    *,
    event_type: str = "system.metrics",
    payload: dict[str, Any] | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
    index: bool = True,
    old_name: bool = True,
) -> str:
    """Write a handled (or pending) event file directly, as the daemon would leave it; returns its id.

    ``ts`` defaults to now; with ``old_name`` the id's embedded time is ``ts`` too. Rows go to the index
    for processed/dead when ``index``. Dead events get a ``.error`` record.
    """
    ts = time.time() if ts is None else ts
    router = EventRouter(spool=sp)
    ev, _ = router.build(event_type, payload or {"service": "t", "metrics": {"n": 1}}, correlation_id=correlation_id)
    ev.id = event_id or (uuid7_at(ts) if old_name else ev.id)
    ev.timestamp = round(ts, 6)
    ev.seal()
    d = events_dir(sp, state)
    (d / f"{ev.id}.json").write_bytes(ev.to_json() + b"\n")
    if state == "dead":
        (d / f"{ev.id}.error").write_text(
            json.dumps(
                {
                    "id": ev.id,
                    "reason": "attempts_exhausted",
                    "dead_at": ts + 1,
                    "attempts": 3,
                    "error": "RuntimeError: boom",
                    "handler": "effects",
                    "traceback": "Traceback...\nRuntimeError: boom",
                    "history": [],
                    "handlers_done": [],
                }
            )
        )
    if index and state in ("processed", "dead"):
        idx = Index(SpoolLayout(sp))
        idx.put([row_of(ev, state)])
        idx.close()
    return ev.id


def index_rows(sp: Path) -> dict[str, str]:
    """{id: state} of every index row."""
    idx = Index(SpoolLayout(sp))
    try:
        return dict(idx.db.execute("SELECT id, state FROM events"))
    finally:
        idx.close()


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@dataclass
class FakeDrift:
    """The little of a drift.detected Event that record_drift_detection reads."""

    id: str
    timestamp: float
    payload: dict[str, Any] = field(default_factory=dict)
