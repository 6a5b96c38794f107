"""Who owns in-flight work: a daemon identity that survives pid reuse.

An owner id is ``<host>.<pid>.<start ticks>``; the start time (from
``/proc/<pid>/stat``) makes a recycled pid look like a different process.
Owners on another host are judged by their heartbeat's age (a lease).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import orjson

# A process's second and later consumers (tests, embedded daemons) add ``-<n>``: same pid, same verdict.
OWNER_RE = re.compile(r"^(?P<host>[A-Za-z0-9_-]{1,64})\.(?P<pid>\d+)\.(?P<start>\d+)(?:-\d{1,9})?\Z")


def _host() -> str:
    h = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return h or "host"


HOST = _host()


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parens: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def current_owner() -> str:
    pid = os.getpid()
    return f"{HOST}.{pid}.{process_start_ticks(pid) or 0}"


def owner_alive(owner: str, heartbeat_dir: Path, lease_seconds: float) -> bool:
    """True unless the owner is provably gone.

    Same host: the pid must exist with the same start time. Other host (or no
    /proc): its heartbeat must be younger than ``lease_seconds``.
    """
    m = OWNER_RE.match(owner)
    if m is None:
        return False
    if m["host"] == HOST and Path("/proc/self/stat").exists():
        ticks = process_start_ticks(int(m["pid"]))
        return ticks is not None and ticks == int(m["start"])
    try:
        beat = orjson.loads((heartbeat_dir / f"{owner}.json").read_bytes())
        return bool(time.time() - float(beat["last_beat"]) < lease_seconds)
    except (OSError, ValueError, KeyError, TypeError):
        return False
