"""Test handler module: a handler that ends its process (or pretends to) for chosen events.

Environment:

* ``EFFECTS_FILE``: each call appends ``<event id>\\tenders\\t<time>\\t<pid>\\t<result>\\n`` with
  one ``os.write`` (``result`` is ``ok`` or the way it ends), *before* ending, so a
  test can count deliveries even of calls that killed the process.
* ``ENDER_IDS_FILE``: lines ``<event id> <how>``; ``how`` is one of

  - ``exit``: ``os._exit(1)`` (no clean-up, like a crash);
  - ``sigkill``: SIGKILL to its own process (stands in for the OOM killer);
  - ``sysexit``: ``sys.exit(3)``; ``sysexit0``: ``sys.exit()``;
  - ``keyboard``: ``raise KeyboardInterrupt``.

* ``ENDER_WAIT_OK``: before ending, wait until the effects file holds this many
  ``ok`` lines (so that, with worker threads, nothing else is running when the
  process dies: the test stays deterministic).
* ``ENDER_PROCESSED_DIR``: with ``ENDER_WAIT_OK``, also wait until that many events
  are filed there: an effect is written before its completion is recorded, and a
  death in between would (rightly) run that handler again.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

HANDLER = "enders"


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _ok_lines(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            return sum(1 for ln in fh if ln.rstrip("\n").endswith("\tok"))
    except FileNotFoundError:
        return 0


def _filed(directory: str) -> int:
    try:
        return sum(1 for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return 0


def _end(how: str) -> None:
    if how == "exit":
        os._exit(1)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # the signal is asynchronous; never return from the handler
    if how == "sysexit":
        sys.exit(3)
    if how == "sysexit0":
        sys.exit()
    if how == "keyboard":
        raise KeyboardInterrupt
    raise AssertionError(f"unknown way to end: {how}")


def register(router: Any) -> None:
    effects = os.environ["EFFECTS_FILE"]
    wait_ok = int(os.environ.get("ENDER_WAIT_OK", "0") or 0)
    processed = os.environ.get("ENDER_PROCESSED_DIR")
    plan: dict[str, str] = {}
    with open(os.environ["ENDER_IDS_FILE"], encoding="utf-8") as fh:
        for ln in fh:
            parts = ln.split()
            if len(parts) == 2:
                plan[parts[0]] = parts[1]
    pid = os.getpid()

    def handler(event: Any) -> None:
        how = plan.get(event.id)
        if how is None:
            _append(effects, f"{event.id}\t{HANDLER}\t{time.time():.6f}\t{pid}\tok\n")
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            _ok_lines(effects) < wait_ok or (processed is not None and _filed(processed) < wait_ok)
        ):
            time.sleep(0.01)
        _append(effects, f"{event.id}\t{HANDLER}\t{time.time():.6f}\t{pid}\t{how}\n")
        _end(how)

    for pattern in ("system.metrics", "function.*"):
        router.subscribe(pattern, handler, name=HANDLER)
