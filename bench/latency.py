#!/usr/bin/env python3
"""Emit-to-handler-start latency of a running daemon at a steady emit rate.

Usage::

    .venv/bin/python bench/latency.py [--rate 1000] [--seconds 10] [--emitters 4] [--reps 3] [--json]

It only measures and prints; it asserts nothing. Steps:

1. Start ``python -m poetctl --spool P daemon --no-builtin-handlers --handlers
   bench/_latency_handlers.py`` (continuous mode, default options: 4 workers,
   file watching on). The handler appends ``<id> <time.time()>`` at its start
   to the file named by ``POETCTL_BENCH_LATENCY_OUT``.
2. Warm up: a few single emits, each waited for (daemon start-up excluded).
3. From this process, ``--emitters`` threads (default 4) call ``router.emit``
   (single, durable calls) on one steady schedule: slot i is due at
   ``t0 + i/rate`` and thread k takes slots k, k+K, k+2K, ... (a late call is
   made at once: the schedule catches up rather than skipping). One durable
   emit takes about 1 ms on the development disk, too close to the 1 ms slot
   for one thread; concurrent emits of one router overlap their fsyncs and
   share the publish step (group commit). Threads wait for their slot by
   sleeping, never by spinning: a spinning thread holds the GIL, and an
   emitter back from fsync then waits for it (spinning made the emit calls
   of 4 threads about 4x slower, p50 4.4 ms instead of 1.0-1.2 ms).
   ``time.time()`` is taken just before each call: latency runs from the
   moment ``emit()`` was called, so it includes emit's own durable commit.
4. Wait until every event was handled, SIGTERM the daemon, and print
   p50/p95/p99/max of handler_start - emit_start, the achieved emit rate, and
   as diagnostics the emit call's own duration, handler_start - emit_return,
   handler_start - scheduled slot (includes any schedule lag) and a file
   create probe (slow creates mean a busy disk, e.g. just after large deletes).

Each rep is a pair, run in alternating order (``--reps``, default 3): the
product as above and a bare loop (bench/_bare_group.py) with the same threads
and schedule doing only the durable work with the same group-commit pattern
(tmp file write + fsync, the leader renames the group into a directory and
fsyncs it once). The bare loop's achieved rate and emit-call percentiles are
the ceiling of this disk in this run: each product figure is printed with its
same-rep ratio, and the summary gives the medians of those ratios.

Also printed: the CPU time per event of this process (the emitters) and of the
daemon process (from /proc/<pid>/stat, start-up excluded), to say where the
time goes when the requested rate is not reached.

Targets: p95 <= 20 ms, p99 <= 50 ms at 1,000 events/s; p99 <= 10 ms at 5,000
events/s from 8 emitting threads (issue 14: ``--rate 5000 --emitters 8``).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bare_group import BareGroupCommit

# bench/ is on sys.path (scripts run as `python bench/X.py`), so the shared helpers import directly.
from _common import (
    REPO,
    clean_env,
    create_probe,
    daemon_cmd,
    ensure_poetctl_importable,
    fmt_loadavg,
    fmt_machine,
    loadavg,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    percentile,
    pick_base,
    print_report,
    remove_scratch,
)

HANDLERS = REPO / "bench" / "_latency_handlers.py"
ENV_OUT = "POETCTL_BENCH_LATENCY_OUT"

ensure_poetctl_importable()

from poetctl.router import EventRouter  # noqa: E402

TARGET_P95_MS = 20.0
TARGET_P99_MS = 50.0
HIGH_RATE = 5000.0  # issue 14: at this rate and above, p99 <= TARGET_P99_MS_HIGH
TARGET_P99_MS_HIGH = 10.0
EVENT_BYTES = 364  # a bench event's file: system.metrics with {"service", "metrics": {"n"}}


log = make_log("latency")


def summary_ms(values: list[float]) -> dict[str, float]:
    s = sorted(v * 1000 for v in values)
    if not s:
        return {"count": 0}
    return {
        "count": len(s),
        "min": s[0],
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "p999": percentile(s, 99.9),
        "max": s[-1],
        "mean": statistics.fmean(s),
    }


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process in seconds (nan if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def read_handled(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) == 2:
            # First start wins (a retried handler would log twice).
            out.setdefault(parts[0].decode(), float(parts[1]))
    return out


def wait_handled(path: Path, ids: set[str], timeout: float, proc: subprocess.Popen[bytes]) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        seen = read_handled(path)
        if ids.issubset(seen.keys()) or time.monotonic() > deadline or proc.poll() is not None:
            return seen
        time.sleep(0.05)


class Schedule:
    """Times of one steady run: slot i due at ``t0 + i/rate``; thread k of K takes slots k, k+K, ..."""

    def __init__(self, n: int, rate: float, emitters: int) -> None:
        self.n, self.rate, self.emitters = n, rate, emitters
        self.slots: list[float] = [0.0] * n  # wall-clock time each slot was due
        self.starts: list[float] = [0.0] * n
        self.ends: list[float] = [0.0] * n
        self.durs: list[float] = [0.0] * n
        self.ids: list[str] = [""] * n
        self.lags: list[float] = [0.0] * emitters
        self.elapsed = 0.0

    def run(self, emit_one: Callable[[int], str]) -> None:
        """Call ``emit_one(i)`` for every slot from ``emitters`` threads; re-raise the first error."""
        errors: list[BaseException] = []
        interval = 1.0 / self.rate
        pc = time.perf_counter
        slots, starts, ends, durs, ids, lags = self.slots, self.starts, self.ends, self.durs, self.ids, self.lags

        def emitter(k: int, t0: float, wall0: float) -> None:
            wall, sleep = time.time, time.sleep
            try:
                for i in range(k, self.n, self.emitters):
                    target = t0 + i * interval
                    slots[i] = wall0 + i * interval
                    now = pc()
                    if now < target:
                        # Sleep, never spin: a spinning thread holds the GIL the other emitters need.
                        sleep(target - now)
                    else:
                        lags[k] = max(lags[k], now - target)
                    c0 = pc()
                    ts = wall()
                    ids[i] = emit_one(i)
                    ends[i] = wall()
                    durs[i] = pc() - c0
                    starts[i] = ts
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        t0 = pc() + 0.01
        wall0 = time.time() + (t0 - pc())
        threads = [threading.Thread(target=emitter, args=(k, t0, wall0)) for k in range(self.emitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.elapsed = pc() - t0
        if errors:
            raise errors[0]

    def emit_report(self) -> dict[str, Any]:
        # Achieved rate over the schedule's span: n events in (time of the last emit start - first).
        span = (max(self.starts) - min(self.starts)) if self.n > 1 else self.elapsed
        return {
            "achieved_rate": (self.n - 1) / span if self.n > 1 and span > 0 else math.nan,
            "elapsed_s": self.elapsed,
            "max_schedule_lag_ms": max(self.lags) * 1000,
            "call_ms": summary_ms(self.durs),
        }


def cpu_us_per_event(t0: os.times_result, t1: os.times_result, n: int) -> float:
    return 1e6 * (t1.user - t0.user + t1.system - t0.system) / n


def run_product(args: argparse.Namespace, n: int, root: Path) -> dict[str, Any]:
    """One rep: a daemon on default settings, ``n`` single emits from this process; times to handler start."""
    spool = root / "spool"
    out_file = root / "handled.txt"
    env = clean_env()
    env[ENV_OUT] = str(out_file)
    report: dict[str, Any] = {"problems": [], "loadavg_start": loadavg()}
    report["create_probe_us"] = create_probe(root / "probe")
    router = EventRouter(spool=spool)
    cmd = daemon_cmd(spool, HANDLERS, once=False)
    log(f"product: starting {' '.join(cmd[1:])}")
    t_proc = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sched = Schedule(n, args.rate, args.emitters)
    try:
        # -- warm-up: the daemon is ready once it handles an event.
        for i in range(args.warmup):
            eid = router.emit("system.metrics", {"service": "bench-warmup", "metrics": {"n": i}})
            seen = wait_handled(out_file, {eid}, 60.0, proc)
            if eid not in seen:
                raise RuntimeError(f"daemon did not handle a warm-up event within 60 s (exit {proc.poll()})")
            if i == 0:
                report["first_event_handled_after_start_s"] = time.perf_counter() - t_proc
        log(f"product: emitting {n} events at {args.rate:g}/s from {args.emitters} threads")
        emit = router.emit
        daemon_cpu0 = proc_cpu_s(proc.pid)
        own0 = os.times()
        sched.run(lambda i: emit("system.metrics", {"service": "bench", "metrics": {"n": i}}))
        own1 = os.times()
        report["emit"] = sched.emit_report()
        seen = wait_handled(out_file, set(sched.ids), 60.0 + n / 500, proc)
        report["cpu_us_per_event"] = {
            "emitters": cpu_us_per_event(own0, own1, n),
            "daemon": 1e6 * (proc_cpu_s(proc.pid) - daemon_cpu0) / n,
        }
    finally:
        rc = proc.poll()
        if rc is None:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                report["problems"].append("daemon did not stop within 60 s of SIGTERM; killed")
        else:
            err = proc.stderr.read() if proc.stderr else b""
            report["problems"].append(f"daemon exited early with {rc}")
        report["daemon_exit"] = proc.returncode
        report["daemon_stderr_tail"] = err.decode(errors="replace")[-1000:]

    ids = sched.ids
    lat = [seen[i] - s for i, s in zip(ids, sched.starts, strict=True) if i in seen]
    report["latency_ms"] = summary_ms(lat)
    report["after_emit_return_ms"] = summary_ms(
        [seen[i] - e for i, e in zip(ids, sched.ends, strict=True) if i in seen]
    )
    report["from_slot_ms"] = summary_ms([seen[i] - s for i, s in zip(ids, sched.slots, strict=True) if i in seen])
    report["missing"] = missing = sum(1 for i in ids if i not in seen)
    if missing:
        report["problems"].append(f"{missing} events never handled")
    report["loadavg_end"] = loadavg()
    return report


def run_bare(args: argparse.Namespace, n: int, root: Path, data: bytes) -> dict[str, Any]:
    """One rep of the bare ceiling: the same schedule and threads, durable work only (bench/_bare_group.py).

    Its tmp files go into the product spool's own ``events/tmp`` and are renamed
    into a sibling of ``pending/``: on ext4 a file's inode is allocated near its
    directory, and creates in two fresh directories of one run differed by up
    to 3x here, which would favour whichever side drew the better directory.
    """
    events = root / "spool" / "events"
    (events / "bare-dest").mkdir()
    report: dict[str, Any] = {"loadavg_start": loadavg()}
    report["create_probe_us"] = create_probe(root / "probe-bare")
    group = BareGroupCommit(str(events / "tmp"), str(events / "bare-dest"))
    sched = Schedule(n, args.rate, args.emitters)
    log(f"bare: emitting {n} files at {args.rate:g}/s from {args.emitters} threads")
    try:
        commit = group.commit
        own0 = os.times()
        sched.run(lambda i: commit(data))
        own1 = os.times()
    finally:
        group.close()
    report["emit"] = sched.emit_report()
    report["cpu_us_per_event"] = {"emitters": cpu_us_per_event(own0, own1, n)}
    report["loadavg_end"] = loadavg()
    return report


def _ms(d: dict[str, float], key: str) -> str:
    return f"{d.get(key, math.nan):.2f}"


def rep_lines(k: int, prod: dict[str, Any], bare: dict[str, Any], p99_target: float, rate: float) -> list[str]:
    L, E, A = prod["latency_ms"], prod["emit"], prod["after_emit_return_ms"]
    BE = bare["emit"]
    pc, bc = E["call_ms"], BE["call_ms"]
    below = "" if E["achieved_rate"] >= 0.95 * rate else "  !! below the requested rate"
    return [
        f"  rep {k}: product achieved {E['achieved_rate']:,.0f}/s, bare {BE['achieved_rate']:,.0f}/s "
        f"(ratio {E['achieved_rate'] / BE['achieved_rate']:.2f}){below}",
        f"    emit -> handler start: p50 {_ms(L, 'p50')}  p95 {_ms(L, 'p95')}  p99 {_ms(L, 'p99')}  "
        f"max {_ms(L, 'max')} ms  [p99 <= {p99_target:g}: {mark(L.get('p99', math.inf) <= p99_target)}]",
        f"    emit call: product p50 {_ms(pc, 'p50')}  p95 {_ms(pc, 'p95')}  p99 {_ms(pc, 'p99')} ms | "
        f"bare p50 {_ms(bc, 'p50')}  p95 {_ms(bc, 'p95')}  p99 {_ms(bc, 'p99')} ms "
        f"(p99 ratio {pc.get('p99', math.nan) / bc.get('p99', math.nan):.2f})",
        f"    emit return -> handler start: p50 {_ms(A, 'p50')}  p95 {_ms(A, 'p95')}  p99 {_ms(A, 'p99')}  "
        f"max {_ms(A, 'max')} ms; max schedule lag product {E['max_schedule_lag_ms']:.1f} ms, bare "
        f"{BE['max_schedule_lag_ms']:.1f} ms",
        f"    CPU per event: emitters {prod['cpu_us_per_event']['emitters']:.0f} us (bare "
        f"{bare['cpu_us_per_event']['emitters']:.0f} us), daemon {prod['cpu_us_per_event']['daemon']:.0f} us; "
        f"load {fmt_loadavg(prod['loadavg_start'])} -> {fmt_loadavg(bare['loadavg_end'])}; create probe "
        f"{prod['create_probe_us']:.0f}/{bare['create_probe_us']:.0f} us/file"
        + (f"; problems: {'; '.join(prod['problems'])}" if prod["problems"] else ""),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="emits per second (default 1000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="emit duration in seconds per rep (default 10)")
    ap.add_argument(
        "--emitters",
        type=int,
        default=4,
        help="emitting threads sharing the schedule (default 4; a single durable emit takes about 1 ms "
        "here, so one thread cannot keep up with 1,000/s)",
    )
    ap.add_argument("--reps", type=int, default=3, help="alternating product/bare rep pairs (default 3)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up emits, each waited for (default 5)")
    ap.add_argument("--tmp-dir", help="parent of the scratch dir (default: the repo's parent)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on stdout (text goes to stderr)")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.emitters < 1 or args.reps < 1:
        ap.error("--rate and --seconds must be > 0, --emitters and --reps >= 1")

    t_start = time.perf_counter()
    n = round(args.rate * args.seconds)
    base = pick_base(args.tmp_dir)
    report: dict[str, Any] = {
        "params": {
            "rate": args.rate,
            "seconds": args.seconds,
            "events": n,
            "warmup": args.warmup,
            "emitters": args.emitters,
            "reps": args.reps,
        },
        "machine": machine_basics(load_key="loadavg_start"),
        "reps": [],
    }
    # The bare loop writes files the size of the product's events.
    data = b"x" * EVENT_BYTES
    for k in range(args.reps):
        # One scratch per rep, removed after both sides ran (deleting between them would slow
        # the second side's creates: ext4 without a journal scans past recently freed inodes).
        root = make_scratch("poetctl-latency-", base)
        EventRouter(spool=root / "spool").layout.init()
        try:
            # Alternate the order so neither side always runs on the disk the other just dirtied.
            if k % 2 == 0:
                prod = run_product(args, n, root)
                bare = run_bare(args, n, root, data)
            else:
                bare = run_bare(args, n, root, data)
                prod = run_product(args, n, root)
        finally:
            remove_scratch(root, parallel=True)
        report["reps"].append({"product": prod, "bare": bare})
    report["machine"]["loadavg_end"] = loadavg()
    report["elapsed_s"] = time.perf_counter() - t_start

    p99_target = TARGET_P99_MS_HIGH if args.rate >= HIGH_RATE else TARGET_P99_MS
    reps = report["reps"]

    def med(side: str, *keys: str) -> float:
        vals = []
        for r in reps:
            v: Any = r[side]
            for key in keys:
                v = v.get(key, math.nan) if isinstance(v, dict) else math.nan
            vals.append(float(v))
        return statistics.median(vals)

    medians = {
        "latency_p50_ms": med("product", "latency_ms", "p50"),
        "latency_p95_ms": med("product", "latency_ms", "p95"),
        "latency_p99_ms": med("product", "latency_ms", "p99"),
        "product_rate": med("product", "emit", "achieved_rate"),
        "bare_rate": med("bare", "emit", "achieved_rate"),
        "product_call_p99_ms": med("product", "emit", "call_ms", "p99"),
        "bare_call_p99_ms": med("bare", "emit", "call_ms", "p99"),
        # Ratios per rep, then their median: the disk swings between reps, a rep's pair shares its weather.
        "rate_ratio": statistics.median(
            r["product"]["emit"]["achieved_rate"] / r["bare"]["emit"]["achieved_rate"] for r in reps
        ),
        "call_p99_ratio": statistics.median(
            r["product"]["emit"]["call_ms"]["p99"] / r["bare"]["emit"]["call_ms"]["p99"] for r in reps
        ),
        "daemon_cpu_us": med("product", "cpu_us_per_event", "daemon"),
        "emitters_cpu_us": med("product", "cpu_us_per_event", "emitters"),
        "bare_cpu_us": med("bare", "cpu_us_per_event", "emitters"),
    }
    report["medians"] = medians
    report["target_p95_met"] = medians["latency_p95_ms"] <= TARGET_P95_MS
    report["target_p99_ms"] = p99_target
    report["target_p99_met"] = medians["latency_p99_ms"] <= p99_target and medians["product_rate"] >= 0.95 * args.rate
    lines = [
        f"poetctl latency benchmark: {n:,} single emits per rep at {args.rate:g}/s for {args.seconds:g} s from "
        f"{args.emitters} threads, daemon with default options; {args.reps} rep(s), each product then bare loop "
        f"(alternating order) (machine: {fmt_machine(report['machine'], load_key='loadavg_start')})",
    ]
    for k, r in enumerate(reps, 1):
        lines += rep_lines(k, r["product"], r["bare"], p99_target, args.rate)
    lines.append(
        f"  median of {len(reps)}: emit -> handler start p50 {medians['latency_p50_ms']:.2f} ms  p95 "
        f"{medians['latency_p95_ms']:.2f} ms  p99 {medians['latency_p99_ms']:.2f} ms; achieved "
        f"{medians['product_rate']:,.0f}/s (bare {medians['bare_rate']:,.0f}/s; median same-rep ratio "
        f"{medians['rate_ratio']:.2f}); emit call p99 {medians['product_call_p99_ms']:.2f} ms (bare "
        f"{medians['bare_call_p99_ms']:.2f} ms; median same-rep ratio {medians['call_p99_ratio']:.2f}); CPU per event "
        f"emitters {medians['emitters_cpu_us']:.0f} us (bare {medians['bare_cpu_us']:.0f} us), daemon "
        f"{medians['daemon_cpu_us']:.0f} us   [p95 <= {TARGET_P95_MS:g}: {mark(report['target_p95_met'])}; "
        f"p99 <= {p99_target:g} at >= 95% of the rate: {mark(report['target_p99_met'])}]"
    )
    print_report("\n".join(lines), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
