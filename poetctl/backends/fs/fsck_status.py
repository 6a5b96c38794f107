"""The last ``poetctl fsck``'s findings, kept in ``run/fsck.json`` for metrics and alerts.

``fsck`` saves a summary after each run (best effort: a read-only user's
fsck still reports, it just leaves no summary). The daemon's alert
evaluator and ``status --prometheus`` read it, so "fsck found loss" reaches
Prometheus and the ``system.alert`` flow without running fsck again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from ...errors import SpoolIOError
from .layout import SpoolLayout
from .reader import CorruptEvent
from .safefs import make_dir, open_dir

FSCK_STATUS_DIR = "run"
FSCK_STATUS = "fsck.json"
# Problem kinds that mean an event was lost to its handlers: unreadable or damaged input.
LOSS_KINDS = ("corrupt_event", "unreadable", "unreadable_dir", "not_regular")
MAX_BYTES = 64 * 1024


def summarize(report: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """What is kept of a report (``FsckReport.to_dict()``): when, how many problems, how many mean loss."""
    summary: dict[str, int] = dict(report.get("summary", {}))
    return {
        "at": round(time.time() if now is None else now, 3),
        "problems": sum(summary.values()),
        "loss": sum(n for k, n in summary.items() if k in LOSS_KINDS),
        "summary": summary,
        "repair": bool(report.get("repair")),
    }


def save_last(root: Path, report: dict[str, Any]) -> bool:
    """Write the summary of ``report`` into ``run/fsck.json``; False if it could not be written."""
    try:
        with make_dir(SpoolLayout(root), FSCK_STATUS_DIR) as d:
            d.write_atomic(FSCK_STATUS, orjson.dumps(summarize(report)))
        return True
    except (OSError, SpoolIOError):
        return False


def read_last(root: Path) -> dict[str, Any] | None:
    """The saved summary, or None (no fsck yet, or unreadable: fsck rewrites it next time)."""
    try:
        d = open_dir(SpoolLayout(root), FSCK_STATUS_DIR)
    except (OSError, SpoolIOError):
        return None
    if d is None:
        return None
    try:
        with d:
            doc = orjson.loads(d.read(FSCK_STATUS, MAX_BYTES))
    except (OSError, SpoolIOError, CorruptEvent, orjson.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("loss"), int) or not isinstance(doc.get("at"), float | int):
        return None
    return doc


__all__ = ["LOSS_KINDS", "read_last", "save_last", "summarize"]
