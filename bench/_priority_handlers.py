"""Handler module for bench/priority.py: record when each *high* event's handler starts.

Appends ``<event id> <time.time() at handler start>\\n`` to the file named by
``POETCTL_BENCH_PRIORITY_OUT`` for high events only (one O_APPEND write); the
normal backlog's events cost one attribute check.
"""

from __future__ import annotations

import os
import time
from typing import Any

ENV = "POETCTL_BENCH_PRIORITY_OUT"


def register(router: Any) -> None:
    fd = os.open(os.environ[ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    clock = time.time
    write = os.write

    def record(event: Any) -> None:
        if event.priority == "high":
            write(fd, f"{event.id} {clock():.6f}\n".encode())

    router.subscribe("*", record, name="priority-probe")
