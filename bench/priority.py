#!/usr/bin/env python3
"""Emit -> handler-start latency of one high event while the daemon drains a normal backlog.

Usage::

    .venv/bin/python bench/priority.py [--pending 100000] [--tries 200] [--workers 4] [--json]

It only measures and prints; it asserts nothing. Steps:

1. Build ``--pending`` normal ``system.metrics`` events over ``--keys``
   correlation ids (partition keys; default 1,000) with ``emit_many``.
2. Start ``python -m poetctl --spool P daemon --no-builtin-handlers --handlers
   bench/_priority_handlers.py`` (continuous, file watching on); the handler
   records the start time of high events only.
3. Once the daemon has begun draining, ``--tries`` times: emit one high
   event (a fresh key) with ``router.emit``, wait until its handler started,
   record handler_start - emit_start. A refill thread keeps the backlog
   above ``--pending`` x 0.8 (emit_many, 5,000 at a time) so every try meets
   a full backlog; the pending count seen at each try is reported.
4. SIGTERM the daemon; print p50/p95/p99/max and the backlog figures.

Target: p99 <= 50 ms over 200 tries with 100,000 normal events pending.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    clean_env,
    daemon_cmd,
    ensure_poetctl_importable,
    fmt_machine,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    percentile,
    pick_base,
    print_report,
    remove_scratch,
)

HANDLERS = REPO / "bench" / "_priority_handlers.py"
ENV_OUT = "POETCTL_BENCH_PRIORITY_OUT"
TARGET_P99_MS = 50.0
CHUNK = 5_000

ensure_poetctl_importable()

from poetctl.router import EventRouter  # noqa: E402

log = make_log("priority")


def backlog(router: EventRouter, start: int, n: int, keys: int) -> None:
    for s in range(start, start + n, CHUNK):
        router.emit_many(
            [
                {
                    "type": "system.metrics",
                    "payload": {"service": "bench", "metrics": {"n": i}},
                    "correlation_id": f"n{i % keys}",
                }
                for i in range(s, min(start + n, s + CHUNK))
            ]
        )


def count_pending(spool: Path) -> int:
    with os.scandir(spool / "events" / "pending") as it:
        return sum(1 for _ in it)


def refill(spool: Path, pending: int, keys: int, stop: Any) -> None:
    """Keep the backlog above 80% of ``pending`` (another process)."""
    r = EventRouter(spool=spool)
    made = pending
    while not stop.is_set():
        if count_pending(spool) < pending * 0.8:
            backlog(r, made, CHUNK, keys)
            made += CHUNK
        else:
            stop.wait(0.3)  # a listing of 100,000 names costs ~30 ms: not too often


def seen(out: Path) -> dict[str, float]:
    try:
        text = out.read_text()
    except FileNotFoundError:
        return {}
    return {a: float(b) for a, b in (line.split() for line in text.splitlines() if line)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--tries", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--keys", type=int, default=1000, help="distinct partition keys in the backlog")
    ap.add_argument("--base", default=None, help="directory for the scratch spool")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    scratch = make_scratch("priority", pick_base(args.base))
    spool = scratch / "spool"
    out = scratch / "high.txt"
    router = EventRouter(spool=spool, create_spool=True)
    log(f"building {args.pending} normal events")
    backlog(router, 0, args.pending, args.keys)
    env = {**clean_env(), ENV_OUT: str(out)}
    cmd = daemon_cmd(spool, HANDLERS, "--workers", str(args.workers), once=False)
    daemon = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = mp.get_context("fork").Event()
    lat: list[float] = []
    emit_ms: list[float] = []
    backlogs: list[int] = []
    try:
        while count_pending(spool) >= args.pending and daemon.poll() is None:
            time.sleep(0.05)  # the daemon has started draining

        # In its own process: a refill thread would hold this process's GIL while the probe emits and polls.
        filler = mp.get_context("fork").Process(target=refill, args=(spool, args.pending, args.keys, stop), daemon=True)
        filler.start()
        for i in range(args.tries):
            backlogs.append(count_pending(spool))
            t0 = time.time()
            eid = router.emit(
                "system.metrics",
                {"service": "bench", "metrics": {"try": i}},
                correlation_id=f"high-{i}",
                priority="high",
            )
            t1 = time.time()
            deadline = time.monotonic() + 30
            while eid not in (got := seen(out)):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"high event {eid} not handled within 30 s (daemon rc {daemon.poll()})")
                time.sleep(0.001)
            lat.append((got[eid] - t0) * 1000)
            emit_ms.append((t1 - t0) * 1000)
        stop.set()
        filler.join(60)
    finally:
        stop.set()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        remove_scratch(scratch)
    s = sorted(lat)
    report: dict[str, Any] = {
        "pending_target": args.pending,
        "backlog_keys": args.keys,
        "tries": len(s),
        "backlog_min": min(backlogs),
        "backlog_median": int(statistics.median(backlogs)),
        "p50_ms": percentile(s, 50),
        "p95_ms": percentile(s, 95),
        "p99_ms": percentile(s, 99),
        "max_ms": s[-1],
        "emit_p50_ms": statistics.median(emit_ms),
        "emit_max_ms": max(emit_ms),
        "target_p99_ms": TARGET_P99_MS,
        "machine": machine_basics(),
    }
    text = (
        f"priority: {len(s)} high events, each emitted onto a backlog of {report['backlog_min']}.."
        f"{max(backlogs)} normal pending (median {report['backlog_median']}, {args.keys} keys), daemon draining\n"
        f"  emit -> handler start: p50 {report['p50_ms']:.1f} ms, p95 {report['p95_ms']:.1f} ms, "
        f"p99 {report['p99_ms']:.1f} ms, max {report['max_ms']:.1f} ms  "
        f"(target p99 <= {TARGET_P99_MS:.0f} ms) {mark(report['p99_ms'] <= TARGET_P99_MS)}\n"
        f"  the emit call itself: p50 {report['emit_p50_ms']:.1f} ms, max {report['emit_max_ms']:.1f} ms\n"
        f"  {fmt_machine(report['machine'])}"
    )
    print_report(text, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
