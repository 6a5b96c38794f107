#!/usr/bin/env python3
"""Operator commands at scale: a spool of 1,000,000 handled events.

Usage::

    .venv/bin/python bench/scale.py [--events 1000000] [--runs 3] [--tmp-dir DIR] [--workers 2] [--keep] [--json]

It only measures and prints; it asserts nothing (figures over target are
marked ``MISSED``). Steps:

1. Build the spool fast (not through emit or a daemon): ``router.build`` once
   per distinct payload, then per event a fresh ``uuid7()`` id, a timestamp
   40 days old (so everything is past the 30-day retention), ``seal()`` and
   ``to_json()`` written straight to ``events/processed/<id>.json``; index rows
   (``row_of(ev, "processed")``) go in with ``Index.put`` in batches. Every
   1,000th event starts a correlation chain of 5 linked events
   (``drift.detected`` -> ``alert.create_external`` -> ... with
   ``causation_id`` links and a shared ``correlation_id``). ``--workers``
   processes write in parallel. Then ``os.sync()``: the expired events of a
   real spool are long on disk, so the timings below must not pay for
   writeback of the build.
2. Time as whole processes (``python -m poetctl ...``, median of ``--runs``)
   and in-process (``poetctl.cli.app`` called in this process, median of
   ``--runs`` after one warm-up):

   ========================================  =========
   ``correlate <event id of a chain root>``  <= 100 ms
   ``tail -n 100 'poet/functions/*'``        <= 300 ms
   ``status``                                <= 300 ms
   ``prune --days 30`` (all N expired)       <= 30 s
   ========================================  =========

   ``tail`` and ``correlate`` print ``not available`` while the command is not
   registered. The *startup floor* (``python -m poetctl --version``, median)
   is printed too: every whole-process figure includes it. ``prune`` runs
   once (it deletes everything), as a process only. Before it, an *unlink
   floor* is measured: a bare ``os.unlink`` of 20,000 files of the same size
   on the same filesystem (serially and on 16 threads), extrapolated to N, so
   prune's figure can be read against what the disk allows (a filesystem
   mounted with ``discard`` trims synchronously on every unlink).
3. Remove the scratch directory (unless ``--keep``).

Check the disk first: ``df -ih`` and ``df -h`` of the scratch directory; N
events need about N inodes and N x 4 KiB. If there is not enough, the script
says so and uses 300,000 events.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path
from typing import Any

# bench/ is on sys.path (scripts run as `python bench/X.py`), so the shared helpers import directly.
from _common import (
    O_CREATE,
    REPO,
    clean_env,
    disk_room,
    ensure_poetctl_importable,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    poetctl_cmd,
    remove_scratch,
    time_cmd,
    timed_run,
)

ensure_poetctl_importable()

from poetctl.backends.fs.index import Index, row_of  # noqa: E402
from poetctl.backends.fs.layout import SpoolLayout  # noqa: E402
from poetctl.ids import uuid7  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402

DAY = 86400.0
CHAIN_EVERY = 1000
CHAIN_LEN = 5
ROW_BATCH = 20000
TARGETS = {"correlate": 0.100, "tail": 0.300, "status": 0.300, "prune": 30.0}
FALLBACK_EVENTS = 300_000


log = make_log("scale")


def samples() -> dict[str, Any]:
    out = {}
    for p in (REPO / "tests" / "samples").glob("*.json"):
        out[p.name[:-5]] = json.loads(p.read_text())["valid"][0]
    return out


CHAIN_TYPES = (
    "drift.detected",
    "alert.create_external",
    "alert.created_external",
    "feedback.human_validation",
    "learning.pattern_detected",
)


# -- build -----------------------------------------------------------------------------------
def _templates(router: EventRouter) -> tuple[list[Any], dict[str, Any]]:
    """Plain templates (metrics, executions of 10 functions, health) and one template per chain type."""
    s = samples()
    plain = [
        router.build("system.metrics", {"service": "bench", "metrics": {"n": 1}})[0],
        router.build("system.health", {"service": "bench", "status": "healthy"})[0],
    ]
    for k in range(10):
        p = dict(s["function.execution"])
        p["function_name"] = f"fn_{k}"
        plain.append(router.build("function.execution", p)[0])
    chain = {t: router.build(t, s[t])[0] for t in CHAIN_TYPES}
    return plain, chain


def _build_part(args: tuple[str, int, int, float]) -> tuple[int, list[str]]:
    """Write events [start, stop) of the spool; returns (count, chain root ids)."""
    spool, start, stop, base_ts = args
    router = EventRouter(spool=spool)
    layout = router.layout
    plain, chain = _templates(router)
    processed = str(layout.processed)
    idx = Index(layout)
    rows: list[Any] = []
    roots: list[str] = []
    i = start
    while i < stop:
        if i % CHAIN_EVERY == 0 and i + CHAIN_LEN <= stop:
            corr = f"bench-chain-{i}"
            prev: str | None = None
            group = []
            for t in CHAIN_TYPES:
                ev = chain[t]
                ev.id, ev.timestamp, ev.correlation_id, ev.causation_id = uuid7(), base_ts + i * 0.001, corr, prev
                group.append(ev.seal())
                _write(processed, ev)
                rows.append(row_of(ev, "processed"))
                prev = ev.id
                i += 1
            roots.append(group[0].id)
            continue
        ev = plain[i % len(plain)]
        ev.id, ev.timestamp = uuid7(), base_ts + i * 0.001
        ev.seal()
        _write(processed, ev)
        rows.append(row_of(ev, "processed"))
        i += 1
        if len(rows) >= ROW_BATCH:
            idx.put(rows)
            rows = []
    idx.put(rows)
    idx.close()
    return stop - start, roots


def _write(directory: str, ev: Any) -> None:
    fd = os.open(f"{directory}/{ev.id}.json", O_CREATE, 0o640)
    try:
        os.write(fd, ev.to_json() + b"\n")
    finally:
        os.close(fd)


def build(spool: Path, n: int, workers: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    SpoolLayout(spool).init()
    Index(SpoolLayout(spool)).close()
    base_ts = time.time() - 40 * DAY
    step = -(-n // (workers * 20))
    parts = [(str(spool), a, min(n, a + step), base_ts) for a in range(0, n, step)]
    roots: list[str] = []
    done = 0
    with Pool(workers) as pool:
        for cnt, r in pool.imap_unordered(_build_part, parts):
            done += cnt
            roots += r
            log(f"  built {done:,} ({done / (time.perf_counter() - t0):,.0f}/s)")
    return time.perf_counter() - t0, roots


# -- timing ----------------------------------------------------------------------------------
def env() -> dict[str, str]:
    return clean_env(drop=("NO_COLOR",))


def registered(cwd: Path) -> set[str]:
    r = subprocess.run(poetctl_cmd("--help"), capture_output=True, text=True, env=env(), cwd=cwd, check=False)
    cmds = set()
    in_cmds = False
    for line in r.stdout.splitlines():
        if line.startswith("Commands:"):
            in_cmds = True
            continue
        if in_cmds and line.strip():
            cmds.add(line.split()[0])
    return cmds


def time_process(argv: list[str], cwd: Path, runs: int) -> tuple[list[float], int, str]:
    times, rc, err = [], 0, ""
    for _ in range(runs):
        dt, rc, stderr = time_cmd(poetctl_cmd(*argv), env(), cwd)
        times.append(dt)
        err = stderr.decode(errors="replace")[-300:]
    return times, rc, err


def time_inprocess(argv: list[str], runs: int) -> tuple[list[float], int]:
    """Call the typer app in this process with stdout/stderr to /dev/null; first call is a warm-up."""
    from poetctl.cli import app

    times: list[float] = []
    rc = 0
    for k in range(runs + 1):
        null = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(null, 1)
        os.dup2(null, 2)
        t0 = time.perf_counter()
        try:
            try:
                rc = int(app(argv, prog_name="poetctl", standalone_mode=False) or 0)
            except SystemExit as exc:
                rc = int(exc.code or 0)
            except Exception as exc:  # click exceptions carry an exit code; anything else is a failure
                rc = int(getattr(exc, "exit_code", 1))
        finally:
            dt = time.perf_counter() - t0
            sys.stdout.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, null):
                os.close(fd)
        if k:
            times.append(dt)
    return times, rc


def unlink_floor(base: Path, n_total: int, count: int = 20000) -> dict[str, float]:
    """Seconds a bare unlink of ``n_total`` such files would take (from ``count``), serial and on 16 threads."""
    out = {}
    for threads in (1, 16):
        d = Path(tempfile.mkdtemp(prefix="poetctl-unlink-", dir=base))
        data = b"x" * 700
        for i in range(count):
            fd = os.open(d / f"{i:08d}.json", O_CREATE, 0o640)
            os.write(fd, data)
            os.close(fd)
        os.sync()
        names = os.listdir(d)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        t0 = time.perf_counter()
        if threads == 1:
            for nm in names:
                os.unlink(nm, dir_fd=dfd)
        else:
            size = -(-len(names) // threads)

            def work(sl: list[str], dfd: int = dfd) -> None:
                for nm in sl:
                    os.unlink(nm, dir_fd=dfd)

            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(work, [names[i : i + size] for i in range(0, len(names), size)]))
        dt = time.perf_counter() - t0
        os.close(dfd)
        os.rmdir(d)
        out[f"threads_{threads}"] = dt / count * n_total
    return out


def fmt_ms(ts: list[float]) -> str:
    return f"{statistics.median(ts) * 1000:8.1f} ms" if ts else "       -   "


def fmt_seconds(v: float, as_s: bool) -> str:
    return f"{v:8.2f} s" if as_s else f"{v * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="handled events to build (default 1000000)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (median; default 3)")
    ap.add_argument("--workers", type=int, default=2, help="build processes (default 2)")
    ap.add_argument("--tmp-dir", help="parent of the scratch directory (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch spool (it is empty after prune)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on stdout")
    args = ap.parse_args(argv)

    base = Path(args.tmp_dir or tempfile.gettempdir())
    free_inodes, free_bytes = disk_room(base)
    n = args.events
    note = ""
    if free_inodes < n * 1.2 + 100_000 or free_bytes < n * 4096 * 1.3 + (1 << 30):
        note = (
            f"not enough room for {n:,} events ({free_inodes:,} inodes, {free_bytes / 1e9:.1f} GB free): "
            f"using {FALLBACK_EVENTS:,}"
        )
        n = min(n, FALLBACK_EVENTS)
        log(note)
    root = make_scratch("poetctl-scale-", base)
    spool = root / "spool"
    report: dict[str, Any] = {
        "events": n,
        "note": note,
        "machine": {
            **machine_basics(all_cpus=True),
            "inodes_free": free_inodes,
            "disk_free_gb": round(free_bytes / 1e9, 1),
        },
        "results": {},
    }
    try:
        log(f"building {n:,} processed events in {spool} ({free_inodes:,} inodes, {free_bytes / 1e9:.0f} GB free)")
        build_s, roots = build(spool, n, args.workers)
        t0 = time.perf_counter()
        os.sync()
        report["build_s"] = round(build_s, 1)
        report["sync_s"] = round(time.perf_counter() - t0, 1)
        log(f"built in {build_s:.1f} s (+{report['sync_s']} s sync); {len(roots):,} chains")
        root_id = roots[len(roots) // 2] if roots else uuid7()
        have = registered(root)
        sp = ["--spool", str(spool)]
        cmds = {
            "correlate": ["correlate", root_id, "-o", "json", *sp],
            "tail": ["tail", "-n", "100", "poet/functions/*", "-o", "jsonl", *sp],
            "status": ["status", "-o", "json", *sp],
        }
        floor, _, _ = time_process(["--version"], root, max(3, args.runs))
        report["startup_floor_s"] = floor
        log(f"startup floor (python -m poetctl --version): {fmt_ms(floor)}")
        for name, cmd in cmds.items():
            if name not in have:
                report["results"][name] = {"available": False}
                log(f"{name}: not available (command not registered)")
                continue
            proc, rc, err = time_process(cmd, root, args.runs)
            inproc, rc2 = time_inprocess(cmd, args.runs)
            report["results"][name] = {
                "available": True,
                "argv": cmd,
                "process_s": proc,
                "inprocess_s": inproc,
                "rc": rc,
                "rc_inprocess": rc2,
                "stderr_tail": err if rc else "",
            }
            log(f"{name}: process {fmt_ms(proc)}, in-process {fmt_ms(inproc)} (rc {rc}/{rc2})")
        log("measuring the unlink floor of this filesystem")
        report["unlink_floor_s"] = {k: round(v, 1) for k, v in unlink_floor(base, n).items()}
        log(f"unlink floor for {n:,} files: {report['unlink_floor_s']}")
        cmd = ["prune", "--days", "30", "-o", "json", *sp]
        dt, p = timed_run(poetctl_cmd(*cmd), root, env(), capture_output=True)
        summary = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None
        left = sum(1 for _ in os.scandir(spool / "events" / "processed"))
        report["results"]["prune"] = {
            "available": True,
            "argv": cmd,
            "process_s": [dt],
            "rc": p.returncode,
            "summary": summary,
            "left_in_processed": left,
            "stderr_tail": p.stderr.decode(errors="replace")[-300:],
        }
        log(f"prune: {dt:.1f} s (rc {p.returncode}; removed {summary and summary['processed']:,}; {left} left)")
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            log(f"removed the scratch directory in {remove_scratch(root, sync=False):.1f} s")

    print(
        f"\npoetctl scale bench: {n:,} handled events (python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {report['machine']['loadavg'][0]:.1f}); build {report['build_s']} s"
    )
    if note:
        print(f"NOTE: {note}")
    print(f"{'command':<12}{'process (median)':>18}{'in-process':>14}{'target':>10}   verdict")
    for name, res in report["results"].items():
        target = TARGETS[name]
        if not res.get("available"):
            print(f"{name:<12}{'not available':>18}{'':>14}{target * 1000:>7.0f} ms")
            continue
        proc_med: float = statistics.median(res["process_s"])
        inproc_med: float | None = statistics.median(res["inprocess_s"]) if res.get("inprocess_s") else None
        rc = res["rc"]
        verdict = mark(proc_med <= target) + ("" if rc == 0 else f" (exit {rc})")
        shown_target = f"{target:.0f} s" if name == "prune" else f"{target * 1000:.0f} ms"
        shown_inproc = fmt_seconds(inproc_med, name == "prune") if inproc_med is not None else "-"
        print(f"{name:<12}{fmt_seconds(proc_med, name == 'prune'):>18}{shown_inproc:>14}{shown_target:>10}   {verdict}")
    if "startup_floor_s" in report:
        floor_ms = statistics.median(report["startup_floor_s"]) * 1000
        print(
            f"startup floor: 'python -m poetctl --version' takes {floor_ms:.1f} ms (median); every process figure "
            "above includes it"
        )
    if "unlink_floor_s" in report:
        f = report["unlink_floor_s"]
        print(
            f"unlink floor for {n:,} files on this filesystem: {f['threads_1']:.1f} s serial, "
            f"{f['threads_16']:.1f} s on 16 threads"
        )
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
