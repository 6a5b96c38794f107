#!/usr/bin/env python3
"""``poetctl prune`` against a bare loop of unlinks over the same number of files, in the same run.

Usage::

    .venv/bin/python bench/prune.py [--events 1000000] [--reps 1] [--threads N] [--serial N] [--tmp-dir DIR] [--json]

Target (issue 14): >= 33,000 removed events/s, and >= 0.6x the bare loop.

Each rep builds two spools of ``--events`` expired handled events with
``bench/scale.py``'s builder (40 days old, indexed, every 1,000th event
starting a chain), then ``os.sync()`` (expired events are long on disk in a
real spool). Then, in alternating order from rep to rep:

* *bare*: ``os.unlink(name, dir_fd=...)`` over the names of one spool's
  ``events/processed/`` (listed and sorted before the clock starts: UUIDv7
  names sort by time, the order prune takes them from the index), on
  ``--threads`` threads (default: as many as prune's unlink threads,
  ``UNLINK_THREADS``; on a filesystem mounted with ``discard`` and no journal
  each unlink waits for a synchronous trim, so a plain serial loop managed
  ~400-650/s here and is no useful yardstick; ``--threads 1`` gives it
  anyway), then one ``fsync`` of the directory;
* *serial* (printed for comparison, not the verdict): before the bare loop,
  the first ``--serial`` names (default 2,000) of the bare spool are
  unlinked one by one on one thread, the literal "bare loop of unlinks";
  the threaded bare loop then takes the rest, and each rate is over its own
  count. On a disk that waits for a trim per unlink the serial loop is far
  slower than the threaded one, so prune's ratio against it flatters prune;
  the verdict stays against the threaded loop;
* *prune*: ``python -m poetctl prune --days 30 -o json`` over the other spool,
  as a whole process (start-up, the index pass, row deletion included).

Both print removed/s and CPU us per removed event (the bare loop's from
this process's rusage, prune's from the child's: start-up included). The
verdict is prune's rate and its ratio to the bare rate of the same rep
(median over reps). The disk swings from run to run, so
only the same-run ratio is comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import (
    clean_env,
    disk_room,
    ensure_poetctl_importable,
    machine_basics,
    make_log,
    make_scratch,
    mark,
    mount_of,
    poetctl_cmd,
    timed_run,
)

ensure_poetctl_importable()

TARGET_RATE = 33_000.0
TARGET_RATIO = 0.6
log = make_log("prune")


def serial_unlinks(directory: Path, count: int) -> tuple[int, float, float]:
    """(files removed, seconds, CPU seconds): unlink the first ``count`` names of ``directory`` on one thread."""
    names = sorted(os.listdir(directory))[:count]
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for name in names:
            os.unlink(name, dir_fd=dfd)
        dt = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        return len(names), dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        os.close(dfd)


def bare_unlinks(directory: Path, threads: int) -> tuple[int, float, float]:
    """(files removed, seconds, CPU seconds): unlink every file of ``directory`` by name relative to its fd."""
    names = sorted(os.listdir(directory))
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if threads <= 1:
            for name in names:
                os.unlink(name, dir_fd=dfd)
        else:
            size = -(-len(names) // threads)

            def work(part: list[str]) -> None:
                for name in part:
                    os.unlink(name, dir_fd=dfd)

            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(work, [names[i : i + size] for i in range(0, len(names), size)]))
        os.fsync(dfd)
        dt = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        return len(names), dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        os.close(dfd)


def run_prune(spool: Path, cwd: Path) -> tuple[int, float, float, int]:
    """(events removed, wall seconds, child CPU seconds, exit code) of one prune process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = clean_env(drop=("PYTHONDONTWRITEBYTECODE",))
    dt, cp = timed_run(
        poetctl_cmd("--spool", str(spool), "prune", "--days", "30", "-o", "json"), cwd, env, capture_output=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    removed = 0
    if cp.returncode == 0 and cp.stdout.strip():
        removed = int(json.loads(cp.stdout)["processed"])
    else:
        log(f"prune exit {cp.returncode}: {cp.stderr.decode(errors='replace')[-300:]}")
    return removed, dt, cpu, cp.returncode


def main(argv: list[str] | None = None) -> int:
    import scale

    from poetctl.backends.fs.prune import UNLINK_THREADS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="expired events per spool (default 1000000)")
    ap.add_argument("--reps", type=int, default=1, help="reps, alternating which goes first (default 1)")
    ap.add_argument(
        "--threads",
        type=int,
        default=UNLINK_THREADS,
        help=f"threads of the bare loop (default {UNLINK_THREADS}, as prune)",
    )
    ap.add_argument(
        "--serial",
        type=int,
        default=2000,
        help="names of the bare spool unlinked first on one thread, printed for comparison (default 2000; 0: none)",
    )
    ap.add_argument("--workers", type=int, default=2, help="build processes (default 2)")
    ap.add_argument("--tmp-dir", help="parent of the scratch directory (default: the system temp dir)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on stdout")
    args = ap.parse_args(argv)

    base = Path(args.tmp_dir or tempfile.gettempdir())
    free_inodes, free_bytes = disk_room(base)
    need = 2 * args.events
    if free_inodes < need * 1.2 + 100_000 or free_bytes < need * 4096 * 1.3 + (1 << 30):
        log(f"not enough room for 2 x {args.events:,} events ({free_inodes:,} inodes, {free_bytes / 1e9:.1f} GB)")
        return 1
    reps: list[dict[str, Any]] = []
    for rep in range(args.reps):
        root = make_scratch("poetctl-prune-", base)
        try:
            a, b = root / "bare", root / "pruned"
            for spool in (a, b):
                secs, _ = scale.build(spool, args.events, args.workers)
                log(f"rep {rep + 1}: built {spool.name} in {secs:.1f} s")
            t0 = time.perf_counter()
            os.sync()
            log(f"rep {rep + 1}: sync {time.perf_counter() - t0:.1f} s")
            res: dict[str, Any] = {}
            order = ("bare", "prune") if rep % 2 == 0 else ("prune", "bare")
            for what in order:
                if what == "bare":
                    if args.serial > 0:
                        n, dt, cpu = serial_unlinks(a / "events" / "processed", args.serial)
                        res["serial"] = {"removed": n, "seconds": dt, "cpu_s": cpu, "rate": n / dt}
                    n, dt, cpu = bare_unlinks(a / "events" / "processed", args.threads)
                    res["bare"] = {"removed": n, "seconds": dt, "cpu_s": cpu, "rate": n / dt}
                else:
                    n, dt, cpu, rc = run_prune(b, root)
                    left = sum(1 for _ in os.scandir(b / "events" / "processed"))
                    res["prune"] = {"removed": n, "seconds": dt, "cpu_s": cpu, "rate": n / dt, "rc": rc, "left": left}
                log(f"rep {rep + 1}: {what}: {res[what]['removed']:,} in {res[what]['seconds']:.2f} s")
            res["ratio"] = res["prune"]["rate"] / res["bare"]["rate"]
            res["load"] = os.getloadavg()[0]
            reps.append(res)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            os.sync()

    m = machine_basics(all_cpus=True)
    mount = mount_of(base)
    print(
        f"\npoetctl prune bench: {args.events:,} expired events per spool, {args.reps} rep(s), bare loop on "
        f"{args.threads} thread(s); {mount['fstype']} ({mount['options']}); python {m['python']}, "
        f"{m['nproc']} CPUs, load {m['loadavg'][0]:.1f}"
    )
    print(
        f"{'rep':<5}{'bare /s':>10}{'bare us':>9}{'prune /s':>10}{'prune us':>10}{'prune s':>9}{'ratio':>7}{'load':>7}"
        f"{'serial /s':>11}{'serial us':>11}"
    )
    for i, r in enumerate(reps, 1):
        p, b, s = r["prune"], r["bare"], r.get("serial")
        print(
            f"{i:<5}{b['rate']:>10,.0f}{b['cpu_s'] / max(1, b['removed']) * 1e6:>9.1f}{p['rate']:>10,.0f}"
            f"{p['cpu_s'] / max(1, p['removed']) * 1e6:>10.1f}{p['seconds']:>9.2f}{r['ratio']:>7.2f}{r['load']:>7.1f}"
            + (f"{s['rate']:>11,.0f}{s['cpu_s'] / max(1, s['removed']) * 1e6:>11.1f}" if s else "")
            + ("" if p["rc"] == 0 and p["left"] == 0 else f"  (exit {p['rc']}, {p['left']} left)")
        )
    rate = statistics.median(r["prune"]["rate"] for r in reps)
    ratio = statistics.median(r["ratio"] for r in reps)
    cpu_us = statistics.median(r["prune"]["cpu_s"] / max(1, r["prune"]["removed"]) for r in reps) * 1e6
    bare_us = statistics.median(r["bare"]["cpu_s"] / max(1, r["bare"]["removed"]) for r in reps) * 1e6
    print(
        f"median: prune {rate:,.0f} removed/s ({mark(rate >= TARGET_RATE)}, target {TARGET_RATE:,.0f}/s), "
        f"{ratio:.2f}x the bare loop ({mark(ratio >= TARGET_RATIO)}, target {TARGET_RATIO}x); "
        f"CPU us/event: prune {cpu_us:.1f}, bare {bare_us:.1f}"
    )
    if all("serial" in r for r in reps):
        serial = statistics.median(r["serial"]["rate"] for r in reps)
        print(
            f"for comparison only: a serial loop (one thread, first {args.serial:,} names of the bare spool) "
            f"{serial:,.0f}/s median; prune is {rate / serial:.1f}x it"
        )
    if args.json:
        print(json.dumps({"events": args.events, "threads": args.threads, "machine": m, "mount": mount, "reps": reps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
