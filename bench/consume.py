#!/usr/bin/env python3
"""Drain benchmark for poetctl: how fast the daemon empties a full spool.

Usage::

    .venv/bin/python bench/consume.py [--events N] [--reps R] [--workers 1,4] [--json]

It only measures and prints; it asserts nothing. For every repetition and in
alternating order, each measurement gets a fresh spool of N ``system.metrics``
events built with ``EventRouter.emit_many`` in chunks of 5,000 (not timed,
followed by ``os.sync()`` so no writeback of the build lands in the timing):

* ``inproc-wK``: ``Daemon(router, DaemonOptions(once=True, watch=False,
  workers=K)).run()`` in this process with one no-op handler on ``"*"``;
  also prints the CPU time per event of the daemon and of its completion
  mover child (which claims and files events on the other core).
* ``subproc-wK``: ``python -m poetctl --spool P daemon --once
  --no-builtin-handlers --handlers bench/_noop_handlers.py --workers K``,
  the whole process timed (start-up included; the start-up of the same
  command on an empty spool is printed too).
* ``bare``: single thread, list ``events/pending``, then per file
  open+read+close, ``orjson.loads``, ``os.rename`` into another directory.

Medians of the repetitions are printed with the ratio daemon/bare.
Targets: daemon >= 20,000 events/s and daemon/bare >= 0.6.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# bench/ is on sys.path (scripts run as `python bench/X.py`), so the shared helpers import directly.
from _common import (
    REPO,
    clean_env,
    count_dir,
    create_probe,
    daemon_cmd,
    ensure_poetctl_importable,
    fmt_machine,
    fs_type,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    pick_base,
    print_report,
    remove_scratch,
    timed_run,
)

NOOP = REPO / "bench" / "_noop_handlers.py"

ensure_poetctl_importable()

import orjson  # noqa: E402

from poetctl.daemon.core import Daemon, DaemonOptions  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402

TARGET_EPS = 20_000
TARGET_RATIO = 0.6
CHUNK = 5_000


log = make_log("consume")


# -- building -----------------------------------------------------------------
def build_spool(spool: Path, n: int) -> float:
    """N system.metrics events via emit_many in chunks of 5,000; returns seconds (not a measurement)."""
    t0 = time.perf_counter()
    router = EventRouter(spool=spool)
    for start in range(0, n, CHUNK):
        router.emit_many(
            [("system.metrics", {"service": "bench", "metrics": {"n": i}}) for i in range(start, min(n, start + CHUNK))]
        )
    os.sync()
    return time.perf_counter() - t0


# -- measurements ---------------------------------------------------------------
def run_inproc(spool: Path, n: int, workers: int, metrics: bool = False) -> dict[str, Any]:
    router = EventRouter(spool=spool)
    router.subscribe("*", lambda e: None, name="noop")
    opts = DaemonOptions(once=True, watch=False, workers=workers)
    obs = None
    if metrics:  # what `poetctl daemon` attaches: metrics, log context, alerts, the stats file for top
        from poetctl.observability.wiring import daemon_observability

        obs = daemon_observability(router, router.config, lease_seconds=opts.lease_seconds)
        d = Daemon(router, opts, middleware=obs.middleware)
    else:
        d = Daemon(router, opts)
    c0 = os.times()
    t0 = time.perf_counter()
    rc = d.run()
    dt = time.perf_counter() - t0
    c1 = os.times()
    if obs is not None:
        obs.close()
    # CPU per event of the daemon process and of its completion mover (a reaped child).
    cpu = {
        "daemon_us": 1e6 * (c1.user - c0.user + c1.system - c0.system) / n,
        "mover_us": 1e6 * (c1.children_user - c0.children_user + c1.children_system - c0.children_system) / n,
    }
    return {"seconds": dt, "eps": n / dt, "rc": rc, "processed": d.counters.processed, "cpu": cpu}


def noop_daemon_cmd(spool: Path, workers: int) -> list[str]:
    return daemon_cmd(spool, NOOP, "--workers", str(workers))


def run_subproc(spool: Path, n: int, workers: int, cwd: Path) -> dict[str, Any]:
    cmd = noop_daemon_cmd(spool, workers)
    env = clean_env(no_bytecode=True)
    dt, p = timed_run(cmd, cwd, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    processed = count_dir(spool / "events" / "processed")
    if p.returncode != 0:
        log(f"subprocess exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return {"seconds": dt, "eps": n / dt, "rc": p.returncode, "processed": processed}


def run_bare(spool: Path, n: int) -> dict[str, Any]:
    """Single thread: listing, then per file open+read+close, orjson.loads, rename into another dir."""
    src = str(spool / "events" / "pending")
    dst = str(spool / "events" / "bare-done")
    os.mkdir(dst)
    flags = os.O_RDONLY | os.O_CLOEXEC
    loads, rename, open_, read, close = orjson.loads, os.rename, os.open, os.read, os.close
    t0 = time.perf_counter()
    names = os.listdir(src)
    for name in names:
        p = f"{src}/{name}"
        fd = open_(p, flags)
        try:
            data = read(fd, 65536)
        finally:
            close(fd)
        loads(data)
        rename(p, f"{dst}/{name}")
    dt = time.perf_counter() - t0
    return {"seconds": dt, "eps": n / dt, "rc": 0, "processed": len(names)}


def startup_cost(root: Path, workers: int, runs: int = 3) -> float:
    """Median wall time of the subprocess command on an empty spool (fixed cost in subproc-*)."""
    spool = root / "empty-spool"
    EventRouter(spool=spool).layout.init()
    cmd, env = noop_daemon_cmd(spool, workers), clean_env(no_bytecode=True)
    times = [timed_run(cmd, root, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)[0] for _ in range(runs)]
    return statistics.median(times)


# -- report ------------------------------------------------------------------------
def render(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        f"poetctl drain benchmark: {p['events']:,} events per run, {p['reps']} alternating reps, medians "
        f"(scratch on {r['machine']['fs']}; machine: {fmt_machine(r['machine'], python=True)}, "
        f"create probe {r['create_probe_us']:.0f} us/file)",
        f"  spool build (emit_many, untimed): median {r['build_s_median']:.1f} s per spool "
        f"({p['events'] / r['build_s_median']:,.0f} ev/s)",
    ]
    bare = r["results"]["bare"]["eps_median"]
    lines.append(
        f"  {'bare loop (1 thread)':<34} {bare:>10,.0f} ev/s   runs: "
        + ", ".join(f"{x:,.0f}" for x in r["results"]["bare"]["eps"])
    )
    for name, res in r["results"].items():
        if name == "bare":
            continue
        eps = res["eps_median"]
        lines.append(
            f"  {res['label']:<34} {eps:>10,.0f} ev/s   ratio/bare {eps / bare:5.2f}   "
            f"[>= {TARGET_EPS:,}: {mark(eps >= TARGET_EPS)}; ratio >= {TARGET_RATIO}: "
            f"{mark(eps / bare >= TARGET_RATIO)}]   runs: " + ", ".join(f"{x:,.0f}" for x in res["eps"])
        )
        if "cpu_us_per_event" in res:
            c = res["cpu_us_per_event"]
            lines.append(
                f"  {'':<34} CPU per event: daemon {c['daemon_us']:.1f} us, mover child {c['mover_us']:.1f} us "
                f"(wall {1e6 / eps:.1f} us)"
            )
    for w, s in r.get("startup_s", {}).items():
        lines.append(f"  subprocess start-up+shutdown on an empty spool (workers={w}): {s * 1000:.0f} ms")
    if r["problems"]:
        lines.append("  problems: " + "; ".join(r["problems"]))
    lines.append(f"  total bench time {r['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="events per spool (default 100000)")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions (default 3)")
    ap.add_argument("--workers", default="1,4", help="comma-separated worker counts (default 1,4)")
    ap.add_argument(
        "--modes",
        default="inproc,subproc,bare",
        help="subset of inproc,metrics,subproc,bare (metrics: + observability)",
    )
    ap.add_argument("--tmp-dir", help="parent of the scratch dir (default: the repo's parent)")
    ap.add_argument("--keep", action="store_true", help="do not delete the scratch dir")
    ap.add_argument(
        "--cleanup-each",
        action="store_true",
        help="delete each spool right after its measurement (for tmpfs scratch; on ext4 without a "
        "journal freshly freed inodes slow down the creates of the next build)",
    )
    ap.add_argument("--json", action="store_true", help="also print one JSON object on stdout (text goes to stderr)")
    args = ap.parse_args(argv)
    workers = [int(x) for x in args.workers.split(",") if x.strip()]
    modes = {m.strip() for m in args.modes.split(",")}
    if args.events < 1 or args.reps < 1 or not workers or min(workers) < 1:
        ap.error("counts must be >= 1")

    t_start = time.perf_counter()
    plan: list[tuple[str, str, int]] = []  # (key, mode, workers)
    for w in workers:
        if "inproc" in modes:
            plan.append((f"inproc-w{w}", "inproc", w))
        if "metrics" in modes:  # the same with the observability middleware (issue 13's <= 5% budget)
            plan.append((f"inproc-w{w}-metrics", "metrics", w))
    for w in workers:
        if "subproc" in modes:
            plan.append((f"subproc-w{w}", "subproc", w))
    plan.append(("bare", "bare", 1))  # the baseline is always measured

    base = pick_base(args.tmp_dir)
    # make_scratch, not TemporaryDirectory: its finaliser would delete the dir even with --keep.
    root = make_scratch("poetctl-consume-", base)
    report: dict[str, Any] = {
        "params": {"events": args.events, "reps": args.reps, "workers": workers, "chunk": CHUNK},
        "machine": {**machine_basics(), "scratch": str(root), "fs": fs_type(root)},
        "problems": [],
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k, _, _ in plan}
    builds: list[float] = []
    try:
        report["create_probe_us"] = create_probe(root / "probe")
        log(f"scratch {root}; create probe {report['create_probe_us']:.0f} us/file")
        for rep in range(args.reps):
            # Rotate the order each repetition so no measurement always follows the same one.
            order = plan[rep % len(plan) :] + plan[: rep % len(plan)]
            for key, mode, w in order:
                spool = root / f"{key}-{rep}"
                b = build_spool(spool, args.events)
                builds.append(b)
                if mode in ("inproc", "metrics"):
                    res = run_inproc(spool, args.events, w, metrics=mode == "metrics")
                elif mode == "subproc":
                    res = run_subproc(spool, args.events, w, root)
                else:
                    res = run_bare(spool, args.events)
                left = count_dir(spool / "events" / "pending")
                res.update(build_s=b, pending_left=left)
                if res["processed"] != args.events or left:
                    report["problems"].append(f"{key} rep {rep}: processed {res['processed']}, {left} left pending")
                runs[key].append(res)
                if args.cleanup_each and not args.keep:
                    shutil.rmtree(spool, ignore_errors=True)
                log(
                    f"rep {rep + 1}/{args.reps} {key:<12} {res['eps']:>9,.0f} ev/s  ({res['seconds']:.2f} s; "
                    f"build {b:.1f} s)"
                )
        if "subproc" in modes:
            report["startup_s"] = {str(w): startup_cost(root, w) for w in workers}
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            log("cleaning up")
            remove_scratch(root, parallel=True)
    results: dict[str, Any] = {}
    bare_med = statistics.median(r["eps"] for r in runs["bare"])
    for key, mode, w in plan:
        eps = [r["eps"] for r in runs[key]]
        med = statistics.median(eps)
        label = {
            "inproc": f"daemon in-process, workers={w}",
            "metrics": f"daemon in-process + metrics, workers={w}",
            "subproc": f"daemon subprocess, workers={w}",
            "bare": "bare loop",
        }[mode]
        results[key] = {
            "label": label,
            "eps": eps,
            "eps_median": med,
            "seconds": [r["seconds"] for r in runs[key]],
            "ratio_vs_bare": med / bare_med,
            "target_eps_met": med >= TARGET_EPS if mode != "bare" else None,
            "target_ratio_met": med / bare_med >= TARGET_RATIO if mode != "bare" else None,
            "rc": [r["rc"] for r in runs[key]],
        }
        if mode in ("inproc", "metrics"):
            results[key]["cpu_us_per_event"] = {
                k: statistics.median(r["cpu"][k] for r in runs[key]) for k in ("daemon_us", "mover_us")
            }
    report["results"] = results
    report["build_s"] = builds
    report["build_s_median"] = statistics.median(builds)
    report["elapsed_s"] = time.perf_counter() - t_start
    print_report(render(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
