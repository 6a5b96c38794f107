#!/usr/bin/env python3
"""Per-event cost of the observability middleware on the generic loop (memory backend, no disk).

Usage::

    .venv/bin/python bench/obs_overhead.py [--events N] [--reps R]

For each repetition, in alternating order, a fresh memory transport with N
``system.metrics`` events is drained by ``Loop`` (inline, one no-op handler)
without middleware and with what ``poetctl daemon`` attaches (metrics, log
context, alerts, stats file; the stats file and the spool gauges point at a
scratch spool). Prints the median CPU microseconds per event of each and the
difference. It measures only; it asserts nothing. Disk-free, so it isolates
the Python cost the middleware adds per event from the filesystem noise of
``bench/consume.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ensure_poetctl_importable

ensure_poetctl_importable()

from poetctl.backends.memory import MemoryTransport  # noqa: E402
from poetctl.config import Config  # noqa: E402
from poetctl.daemon.loop import Loop  # noqa: E402
from poetctl.observability.wiring import daemon_observability  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402


def run(n: int, with_obs: bool, scratch: Path) -> float:
    t = MemoryTransport()
    router = EventRouter(transport=t)
    router.subscribe("*", lambda e: None, name="noop")
    router.emit_many([("system.metrics", {"service": "b", "metrics": {"n": i}}) for i in range(n)])
    mw = []
    obs = None
    if with_obs:
        obs = daemon_observability(router, Config(spool=scratch), lease_seconds=30.0)
        mw = obs.middleware
    loop = Loop(t.consumer(), router.subscriptions, router, middleware=mw)
    c0 = time.process_time()
    loop.run(once=True)
    dt = time.process_time() - c0
    if obs is not None:
        obs.close()
    return 1e6 * dt / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d) / "spool"
        from poetctl.backends.fs.layout import SpoolLayout

        SpoolLayout(scratch).init()
        for rep in range(args.reps):
            order = [False, True] if rep % 2 == 0 else [True, False]
            for flag in order:
                (on if flag else off).append(run(args.events, flag, scratch))
    a, b = statistics.median(off), statistics.median(on)
    print(f"generic loop on memory, {args.events:,} events x {args.reps} alternating reps, CPU per event (median):")
    print(f"  without middleware {a:6.2f} us   runs: " + ", ".join(f"{x:.2f}" for x in off))
    print(f"  with observability {b:6.2f} us   runs: " + ", ".join(f"{x:.2f}" for x in on))
    extra = b - a
    print(f"  added {extra:+.2f} us/event: {extra / a:+.1%} of this loop, {extra / 50:+.1%} of a 50 us/event fs drain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
