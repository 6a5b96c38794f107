#!/usr/bin/env python3
"""Drain benchmark for poetctl: how fast the daemon empties a full spool.

Usage::

    .venv/bin/python bench/consume.py [--events N] [--reps R] [--workers 1,4] [--large] [--json]

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

Medians of the repetitions are printed with the ratio daemon/bare, in
events/s and in MB/s of event files (their size on disk).
Targets: daemon >= 20,000 events/s and daemon/bare >= 0.6.

``--large``: each event is a ``system.metrics`` payload of 500 metrics
(~15 KiB a file; issue 14's byte case). Targets then: daemon >= 200 MB/s and
daemon/bare >= 0.4.

``--canonical-order``: before each drain (untimed), rewrite every event file
in canonical key order with the checksum member last - what a writer storing
the canonical bytes would leave - to measure that format's drain.
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
TARGET_MBPS_LARGE = 200.0
TARGET_RATIO_LARGE = 0.4
LARGE_KEYS = 500  # metrics per large event: ~15 KiB files
CHUNK = 5_000


log = make_log("consume")


# -- building -----------------------------------------------------------------
def large_payload(i: int) -> dict[str, Any]:
    """A system.metrics payload of LARGE_KEYS metrics (~15 KiB as an event file)."""
    return {
        "service": "bench",
        "host": "bench-host-01",
        "window_seconds": 60,
        "metrics": {f"host.cpu{k % 8}.metric_{k:03d}": (i * 7 + k) * 1.25 + 0.001 * k for k in range(LARGE_KEYS)},
    }


def build_spool(spool: Path, n: int, large: bool = False) -> float:
    """N system.metrics events via emit_many in chunks; returns seconds (not a measurement)."""
    t0 = time.perf_counter()
    router = EventRouter(spool=spool)
    chunk = CHUNK // 10 if large else CHUNK
    for start in range(0, n, chunk):
        router.emit_many(
            [
                ("system.metrics", large_payload(i) if large else {"service": "bench", "metrics": {"n": i}})
                for i in range(start, min(n, start + chunk))
            ]
        )
    os.sync()
    return time.perf_counter() - t0


def rewrite_canonical(spool: Path) -> None:
    """Rewrite each pending event in canonical key order, checksum member last (untimed).

    What a writer storing the canonical bytes would leave (``--canonical-order``): the
    reader then proves such a file exact by comparison, and re-serialises keys already sorted.
    """
    from poetctl.event import canonical

    pending = spool / "events" / "pending"
    for name in os.listdir(pending):
        if not name.endswith(".json"):
            continue
        p = pending / name
        d = orjson.loads(p.read_bytes())
        stated = d.pop("checksum")
        tmp = pending / f".{name}.tmp"
        tmp.write_bytes(canonical(d)[:-1] + b',"checksum":' + orjson.dumps(stated) + b"}")
        os.rename(tmp, p)
    os.sync()


def spool_bytes(spool: Path) -> int:
    """Bytes of the event files in events/pending (what a drain reads)."""
    with os.scandir(spool / "events" / "pending") as it:
        return sum(e.stat(follow_symlinks=False).st_size for e in it if e.name.endswith(".json"))


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
    c0 = os.times()
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
    c1 = os.times()
    cpu = {"daemon_us": 1e6 * (c1.user - c0.user + c1.system - c0.system) / n, "mover_us": 0.0}
    return {"seconds": dt, "eps": n / dt, "rc": 0, "processed": len(names), "cpu": cpu}


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
    large = p.get("large", False)
    if large:
        lines.append(f"  large events: {LARGE_KEYS} metrics each, mean file {r['event_bytes']:,.0f} bytes")
    if p.get("canonical_order"):
        lines.append("  event files rewritten in canonical key order (checksum last) before each drain")
    bare = r["results"]["bare"]["eps_median"]
    bare_mb = r["results"]["bare"]["mbps_median"]
    lines.append(
        f"  {'bare loop (1 thread)':<34} {bare:>10,.0f} ev/s {bare_mb:7.1f} MB/s   runs: "
        + ", ".join(f"{x:,.0f}" for x in r["results"]["bare"]["eps"])
        + " ev/s; "
        + ", ".join(f"{x:.1f}" for x in r["results"]["bare"]["mbps"])
        + " MB/s"
    )
    bare_cpu = r["results"]["bare"]["cpu_us_per_event"]["daemon_us"]
    lines.append(f"  {'':<34} CPU per event: {bare_cpu:.1f} us")
    for name, res in r["results"].items():
        if name == "bare":
            continue
        eps = res["eps_median"]
        mb = res["mbps_median"]
        if large:
            check = (
                f"[>= {TARGET_MBPS_LARGE:.0f} MB/s: {mark(mb >= TARGET_MBPS_LARGE)}; ratio >= {TARGET_RATIO_LARGE}: "
                f"{mark(eps / bare >= TARGET_RATIO_LARGE)}]"
            )
        else:
            check = (
                f"[>= {TARGET_EPS:,}: {mark(eps >= TARGET_EPS)}; "
                f"ratio >= {TARGET_RATIO}: {mark(eps / bare >= TARGET_RATIO)}]"
            )
        lines.append(
            f"  {res['label']:<34} {eps:>10,.0f} ev/s {mb:7.1f} MB/s   ratio/bare {eps / bare:5.2f}   {check}   runs: "
            + ", ".join(f"{x:,.0f}" for x in res["eps"])
            + " ev/s; "
            + ", ".join(f"{x:.1f}" for x in res["mbps"])
            + " MB/s; same-run ratios "
            + ", ".join(f"{x:.2f}" for x in res["ratios"])
        )
        if "cpu_us_per_event" in res:
            c = res["cpu_us_per_event"]
            lines.append(
                f"  {'':<34} CPU per event: daemon {c['daemon_us']:.1f} us, mover child {c['mover_us']:.1f} us "
                f"(wall {1e6 / eps:.1f} us; CPU ratio bare/(daemon+mover) "
                f"{bare_cpu / (c['daemon_us'] + c['mover_us']):.2f})"
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
    ap.add_argument(
        "--large", action="store_true", help=f"events of {LARGE_KEYS} metrics (~15 KiB) instead of tiny ones"
    )
    ap.add_argument(
        "--canonical-order",
        action="store_true",
        help="rewrite the built events in canonical key order, checksum last (previews a writer storing "
        "canonical bytes; untimed)",
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
        "params": {
            "events": args.events,
            "reps": args.reps,
            "workers": workers,
            "chunk": CHUNK,
            "large": args.large,
            "canonical_order": args.canonical_order,
        },
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
                b = build_spool(spool, args.events, args.large)
                if args.canonical_order:
                    rewrite_canonical(spool)
                builds.append(b)
                nbytes = spool_bytes(spool)
                if mode in ("inproc", "metrics"):
                    res = run_inproc(spool, args.events, w, metrics=mode == "metrics")
                elif mode == "subproc":
                    res = run_subproc(spool, args.events, w, root)
                else:
                    res = run_bare(spool, args.events)
                left = count_dir(spool / "events" / "pending")
                res.update(build_s=b, pending_left=left, bytes=nbytes, mbps=nbytes / res["seconds"] / 1e6)
                if res["processed"] != args.events or left:
                    report["problems"].append(f"{key} rep {rep}: processed {res['processed']}, {left} left pending")
                runs[key].append(res)
                if args.cleanup_each and not args.keep:
                    shutil.rmtree(spool, ignore_errors=True)
                cpu = res.get("cpu")
                log(
                    f"rep {rep + 1}/{args.reps} {key:<12} {res['eps']:>9,.0f} ev/s {res['mbps']:7.1f} MB/s "
                    f"({res['seconds']:.2f} s; build {b:.1f} s"
                    + (f"; CPU/ev daemon {cpu['daemon_us']:.0f} us, mover {cpu['mover_us']:.0f} us" if cpu else "")
                    + ")"
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
    all_bytes = [r["bytes"] for rs in runs.values() for r in rs]
    report["event_bytes"] = sum(all_bytes) / len(all_bytes) / args.events
    for key, mode, w in plan:
        eps = [r["eps"] for r in runs[key]]
        med = statistics.median(eps)
        mbps = [r["mbps"] for r in runs[key]]
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
            "mbps": mbps,
            "mbps_median": statistics.median(mbps),
            # each rep's ratio against the bare loop of the same rep (the disk swings between reps)
            "ratios": [r["eps"] / b["eps"] for r, b in zip(runs[key], runs["bare"], strict=True)],
            "seconds": [r["seconds"] for r in runs[key]],
            "ratio_vs_bare": med / bare_med,
            "target_eps_met": (
                (statistics.median(mbps) >= TARGET_MBPS_LARGE if args.large else med >= TARGET_EPS)
                if mode != "bare"
                else None
            ),
            "target_ratio_met": (
                med / bare_med >= (TARGET_RATIO_LARGE if args.large else TARGET_RATIO) if mode != "bare" else None
            ),
            "rc": [r["rc"] for r in runs[key]],
        }
        if mode in ("inproc", "metrics", "bare"):
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
