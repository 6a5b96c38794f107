"""Test handler module: records one line per call, fails on demand, sleeps on demand.

Environment:

* ``EFFECTS_FILE``: each call appends ``<event id>\\t<handler>\\t<time>\\t<pid>\\t<ok|fail>\\n``
  with one ``os.write`` on an ``O_APPEND`` descriptor, so a SIGKILL never tears a line.
* ``FAIL_IDS_FILE``: lines ``<event id> <count>``; the handler raises for that id
  until it has failed ``count`` times (counted from the effects file, so the count
  survives restarts). ``count`` may be ``always``.
* ``SLEEP_S``: seconds to sleep before recording the effect (default 0).
* ``STARTED_FILE``: each call of ``effects`` and ``second`` first appends
  ``<event id>\t<handler>\t<pid>\n`` there, before sleeping: a test can wait until a
  handler is demonstrably running instead of sleeping and hoping it is.
* ``EFFECT_TYPES``: comma-separated patterns to subscribe (default: ``system.metrics,
  function.*,drift.detected``).
* ``FOLLOWUP``: if ``1``, a second handler named ``followup`` emits one
  ``system.health`` event per cause via ``router.emit`` (a derived id).
* ``SECOND_SLEEP_S``: if set, a last handler named ``second`` sleeps that long and
  then records its own line (handler column ``second``).
"""

from __future__ import annotations

import os
import time
from typing import Any

HANDLER = "effects"


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _failures_so_far(path: str, event_id: str) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            return sum(1 for ln in fh if ln.startswith(event_id + "\t") and ln.rstrip("\n").endswith("\tfail"))
    except FileNotFoundError:
        return 0


def _load_fail_ids() -> dict[str, float]:
    path = os.environ.get("FAIL_IDS_FILE")
    out: dict[str, float] = {}
    if not path:
        return out
    with open(path, encoding="utf-8") as fh:
        for ln in fh:
            parts = ln.split()
            if len(parts) == 2:
                out[parts[0]] = float("inf") if parts[1] == "always" else int(parts[1])
    return out


def register(router: Any) -> None:
    effects = os.environ["EFFECTS_FILE"]
    sleep_s = float(os.environ.get("SLEEP_S", "0") or 0)
    fail_ids = _load_fail_ids()
    started = os.environ.get("STARTED_FILE")
    pid = os.getpid()
    patterns = [p for p in os.environ.get("EFFECT_TYPES", "system.metrics,function.*,drift.detected").split(",") if p]

    def effect(event: Any) -> None:
        if started:
            _append(started, f"{event.id}\t{HANDLER}\t{pid}\n")
        if sleep_s:
            time.sleep(sleep_s)
        limit = fail_ids.get(event.id)
        if limit is not None and _failures_so_far(effects, event.id) < limit:
            _append(effects, f"{event.id}\t{HANDLER}\t{time.time():.6f}\t{pid}\tfail\n")
            raise RuntimeError(f"planned failure of {event.id}")
        _append(effects, f"{event.id}\t{HANDLER}\t{time.time():.6f}\t{pid}\tok\n")

    def followup(event: Any) -> None:
        router.emit("system.health", {"service": "followup", "status": "healthy", "details": {"cause": event.id}})

    second_sleep = os.environ.get("SECOND_SLEEP_S")

    def second(event: Any) -> None:
        if started:
            _append(started, f"{event.id}\tsecond\t{pid}\n")
        time.sleep(float(second_sleep or 0))
        _append(effects, f"{event.id}\tsecond\t{time.time():.6f}\t{pid}\tok\n")

    for pattern in patterns:
        router.subscribe(pattern, effect, name=HANDLER)
        if os.environ.get("FOLLOWUP") == "1":
            router.subscribe(pattern, followup, name="followup")
        if second_sleep is not None:
            router.subscribe(pattern, second, name="second")
