#!/usr/bin/env python3
"""Peak RSS of ``poetctl daemon --once`` draining a large backlog.

Usage::

    .venv/bin/python bench/memory.py [--events 1000000] [--large] [--json]

It only measures and prints; it asserts nothing. Steps:

1. Build the backlog fast (not through emit): create the spool with
   ``EventRouter``, build one template ``system.metrics`` event with
   ``router.build``, then per event set a fresh ``uuid7()`` id, ``seal()`` and
   write ``to_json()`` to ``events/pending/<id>.json`` (plain open/write, no
   fsync). The build time is printed.
2. Run ``python -m poetctl --spool P daemon --once --no-builtin-handlers
   --handlers bench/_noop_handlers.py`` and sample its ``VmRSS``/``VmHWM``
   from ``/proc/<pid>/status`` every 50 ms; after it exits also read
   ``getrusage(RUSAGE_CHILDREN).ru_maxrss``. The peak is the largest of them.
3. Print the peak RSS in MB, the drain time and rate, then remove the spool.

``--large``: each event is a ``system.metrics`` payload of 500 metrics
(~15 KiB a file, issue 14's byte case; use fewer ``--events``, e.g. 50000).

Target: peak RSS <= 64 MB with 1,000,000 events pending, and with 14 KiB events
(issue 14; it was 100 MB before).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# bench/ is on sys.path (scripts run as `python bench/X.py`), so the shared helpers import directly.
from _common import (
    O_CREATE,
    REPO,
    clean_env,
    count_dir,
    daemon_cmd,
    disk_room,
    ensure_poetctl_importable,
    fmt_machine,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    pick_base,
    print_report,
    remove_scratch,
)

NOOP = REPO / "bench" / "_noop_handlers.py"

ensure_poetctl_importable()

from poetctl.ids import uuid7  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402

TARGET_MB = 64.0
LARGE_KEYS = 500  # metrics per --large event: ~15 KiB files


log = make_log("memory")


def build(spool: Path, n: int, large: bool = False) -> float:
    t0 = time.perf_counter()
    router = EventRouter(spool=spool)
    router.layout.init()
    payload: dict[str, Any] = {"service": "bench", "metrics": {"n": 0}}
    if large:
        metrics = {f"host.cpu{k % 8}.metric_{k:03d}": k * 1.25 + 0.001 * k for k in range(LARGE_KEYS)}
        payload = {"service": "bench", "host": "bench-host-01", "window_seconds": 60, "metrics": metrics}
    ev = router.build("system.metrics", payload)[0]
    pending = str(router.layout.pending)
    step = max(1, n // 10)
    for i in range(n):
        ev.id = uuid7()
        ev.seal()
        fd = os.open(f"{pending}/{ev.id}.json", O_CREATE, 0o640)
        try:
            os.write(fd, ev.to_json())
        finally:
            os.close(fd)
        if (i + 1) % step == 0:
            log(f"  built {i + 1:,} ({(i + 1) / (time.perf_counter() - t0):,.0f}/s)")
    return time.perf_counter() - t0


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    k, v = line.split(b":", 1)
                    out[k.decode()] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_daemon(spool: Path, cwd: Path, interval: float) -> dict[str, Any]:
    env = clean_env()
    cmd = daemon_cmd(spool, NOOP)
    log(f"running {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[float, int]] = []  # (seconds since start, VmRSS kB)
    hwm = [0]
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            s = status_kb(proc.pid)
            if "VmRSS" in s:
                samples.append((time.perf_counter() - t0, s["VmRSS"]))
            if s.get("VmHWM", 0) > hwm[0]:
                hwm[0] = s["VmHWM"]
            done.wait(interval)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    _, err = proc.communicate()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    ru_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux
    rss_max = max((kb for _, kb in samples), default=0)
    peak_kb = max(rss_max, hwm[0], ru_kb)
    # A coarse RSS curve (one point per ~5% of the run) for the JSON output.
    curve = samples[:: max(1, len(samples) // 20)]
    return {
        "seconds": dt,
        "rc": proc.returncode,
        "stderr_tail": err.decode(errors="replace")[-600:],
        "samples": len(samples),
        "sampled_vmrss_max_mb": rss_max / 1024,
        "last_vmhwm_mb": hwm[0] / 1024,
        "ru_maxrss_mb": ru_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "rss_curve_mb": [(round(t, 2), round(kb / 1024, 1)) for t, kb in curve],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="pending events (default 1000000)")
    ap.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval in s (default 0.05)")
    ap.add_argument(
        "--large", action="store_true", help=f"events of {LARGE_KEYS} metrics (~15 KiB) instead of tiny ones"
    )
    ap.add_argument("--tmp-dir", help="parent of the scratch dir (default: the repo's parent)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on stdout (text goes to stderr)")
    args = ap.parse_args(argv)
    if args.events < 1:
        ap.error("--events must be >= 1")

    t_start = time.perf_counter()
    base = pick_base(args.tmp_dir)
    root = make_scratch("poetctl-memory-", base)
    spool = root / "spool"
    free_inodes, free_bytes = disk_room(base)
    report: dict[str, Any] = {
        "params": {"events": args.events, "interval": args.interval, "large": args.large},
        "machine": {**machine_basics(), "disk_free_gb": free_bytes / 1e9, "inodes_free": free_inodes},
        "problems": [],
    }
    try:
        log(
            f"building {args.events:,} pending events in {spool} (disk free {free_bytes / 1e9:.0f} GB, "
            f"{free_inodes:,} inodes free)"
        )
        report["build_s"] = build(spool, args.events, args.large)
        os.sync()
        log(f"built in {report['build_s']:.1f} s; draining")
        res = run_daemon(spool, root, args.interval)
        report.update(res)
        processed = count_dir(spool / "events" / "processed")
        left = count_dir(spool / "events" / "pending")
        report["processed"] = processed
        report["pending_left"] = left
        report["rate"] = args.events / res["seconds"]
        if res["rc"] != 0:
            report["problems"].append(f"daemon exited {res['rc']}: {res['stderr_tail'][-300:]}")
        if processed != args.events or left:
            report["problems"].append(f"processed {processed}, {left} left pending")
    finally:
        log("removing the spool")
        report["cleanup_s"] = remove_scratch(root)
    report["target_met"] = report.get("peak_rss_mb", float("inf")) <= TARGET_MB
    report["elapsed_s"] = time.perf_counter() - t_start

    lines = [
        f"poetctl memory benchmark: daemon --once with {args.events:,} "
        f"{'large (~15 KiB) ' if args.large else ''}events pending (machine: "
        f"{fmt_machine(report['machine'])})",
        f"  build (direct writes, no fsync): {report['build_s']:.1f} s ({args.events / report['build_s']:,.0f} ev/s)",
    ]
    if "peak_rss_mb" in report:
        lines += [
            f"  peak RSS {report['peak_rss_mb']:.1f} MB   [<= {TARGET_MB:g} MB: "
            f"{mark(report['target_met'])}]   (sampled VmRSS max {report['sampled_vmrss_max_mb']:.1f}, "
            f"last VmHWM {report['last_vmhwm_mb']:.1f}, ru_maxrss {report['ru_maxrss_mb']:.1f}; "
            f"{report['samples']} samples)",
            f"  drain: {report['seconds']:.1f} s, {report['rate']:,.0f} events/s, exit {report['rc']}, "
            f"processed {report['processed']:,}, left pending {report['pending_left']:,}",
            "  RSS curve (s, MB): " + " ".join(f"{t:g}:{mb:g}" for t, mb in report["rss_curve_mb"]),
        ]
    lines.append(f"  cleanup {report['cleanup_s']:.1f} s; total {report['elapsed_s']:.1f} s")
    if report["problems"]:
        lines.append("  problems: " + "; ".join(report["problems"]))
    print_report("\n".join(lines), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
