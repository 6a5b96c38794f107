"""Handler module for bench/latency.py: record when each handler starts.

Appends ``<event id> <time.time() at handler start>\\n`` to the file named by
``POETCTL_BENCH_LATENCY_OUT`` with one ``write`` per event on an O_APPEND fd
(atomic across the daemon's worker threads; no buffering to flush at exit).
"""

from __future__ import annotations

import os
import time
from typing import Any

ENV = "POETCTL_BENCH_LATENCY_OUT"


def register(router: Any) -> None:
    path = os.environ[ENV]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    clock = time.time
    write = os.write

    def record(event: Any) -> None:
        t = clock()
        write(fd, f"{event.id} {t:.6f}\n".encode())

    router.subscribe("*", record, name="latency-probe")
