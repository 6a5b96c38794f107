#!/usr/bin/env python3
"""Start-up of the commands people type and script, as whole processes, against ``python -c pass``.

Usage::

    .venv/bin/python bench/startup.py [--spool BIG_SPOOL [--correlate ID]] [--events 1000000]
                                      [--runs 9] [--tmp-dir DIR] [--importtime] [--instructions] [--json]

Target (issue 14): ``emit``, ``status``, ``tail -n 10`` and ``correlate`` each
<= 4x ``python -c pass``, median of 9, with the readers on a 1,000,000-event
spool. The machine is shared and swings a lot, so every rep runs all the
commands back to back in a rotating order (the baseline included), and the
verdict is the ratio of medians taken in the same run. CPU time (user + sys of
the child) is printed too: it is steadier than wall time on a busy machine.

The readers' spool is ``--spool`` (an existing one, e.g. built by
``bench/scale.py --keep``; ``--correlate`` names a chain root in it), else
one of ``--events`` handled events is built here (``bench/scale.py``'s
builder: 40 days old, every 1,000th event starts a 5-event chain) and removed
afterwards. ``emit`` writes one ``system.health`` event to a small scratch
spool of its own. Byte-code caching is on (``PYTHONDONTWRITEBYTECODE`` is
dropped), as for an installed package; one warm-up call of each command
writes the caches before timing.

``--importtime`` adds, per command, the top costs from ``python -X importtime``
(one run; the figures are inflated by the tracing but rank the modules).

``--instructions`` adds, per command, the instructions of one whole process
under ``valgrind --tool=callgrind`` (byte-code caches warm) and their ratio to
``python -c pass``'s: unlike wall time, they do not move with the machine's
load, so they show a change of a few percent that the wall medians cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import clean_env, ensure_poetctl_importable, machine_basics, make_log, make_scratch, mark, poetctl_cmd

ensure_poetctl_importable()

TARGET_RATIO = 4.0
log = make_log("startup")


def env() -> dict[str, str]:
    e = clean_env(drop=("NO_COLOR", "PYTHONDONTWRITEBYTECODE", "POETCTL_NO_FASTPATH"))
    return e


def run_once(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, child CPU seconds, exit code) of one process, output to /dev/null."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = subprocess.run(
        argv, cwd=cwd, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ).returncode
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu, rc


def importtime(argv: list[str], cwd: Path, top: int = 8) -> dict[str, Any]:
    """Module count, total self time and the top cumulative / self costs of ``python -X importtime``."""
    cp = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    rows = []
    for line in cp.stderr.decode(errors="replace").splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    roots = sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])[:top]
    selfs = sorted(rows, key=lambda r: -r[0])[:top]
    heavy = sorted({r[3].split(".")[0] for r in rows} & {"typer", "click", "rich", "jsonschema", "jsonschema_rs"})
    return {
        "modules": len(rows),
        "self_total_ms": round(sum(r[0] for r in rows) / 1000, 1),
        "top_cumulative": [(r[3], round(r[1] / 1000, 1)) for r in roots],
        "top_self": [(r[3], round(r[0] / 1000, 1)) for r in selfs],
        "heavy": heavy,
    }


def instructions(argv: list[str], cwd: Path) -> int | None:
    """Instructions of one whole process of ``argv`` under callgrind (None without valgrind)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    cp = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    m = re.search(r"Collected : (\d+)", cp.stderr.decode(errors="replace"))
    return int(m[1]) if m else None


def build_spool(root: Path, n: int) -> tuple[Path, str]:
    import scale

    spool = root / "spool"
    log(f"building {n:,} handled events in {spool}")
    secs, roots = scale.build(spool, n, 2)
    os.sync()
    log(f"built in {secs:.1f} s")
    return spool, roots[len(roots) // 2] if roots else "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spool", help="an existing spool for the readers (default: build one of --events)")
    ap.add_argument("--correlate", help="the id to correlate (default: a chain root of the built spool)")
    ap.add_argument("--events", type=int, default=1_000_000, help="events to build when no --spool (1000000)")
    ap.add_argument("--runs", type=int, default=9, help="reps (median; default 9)")
    ap.add_argument("--tmp-dir", help="parent of the scratch directory (default: the system temp dir)")
    ap.add_argument("--importtime", action="store_true", help="also print -X importtime's top costs per command")
    ap.add_argument("--instructions", action="store_true", help="also count each command's instructions (valgrind)")
    ap.add_argument("--json", action="store_true", help="also print one JSON object on stdout")
    args = ap.parse_args(argv)

    base = Path(args.tmp_dir or tempfile.gettempdir())
    root = make_scratch("poetctl-startup-", base)
    try:
        if args.spool:
            spool, ident = Path(args.spool).resolve(), args.correlate or "none"
        else:
            spool, ident = build_spool(root, args.events)
            ident = args.correlate or ident
        small = root / "emit-spool"
        subprocess.run(poetctl_cmd("--spool", str(small), "init"), env=env(), capture_output=True, check=True)
        payload = '{"service": "bench", "status": "healthy"}'
        cmds: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "emit": poetctl_cmd("--spool", str(small), "emit", "system.health", payload),
            "status": poetctl_cmd("--spool", str(spool), "status"),
            "tail -n 10": poetctl_cmd("--spool", str(spool), "tail", "-n", "10"),
            "correlate": poetctl_cmd("--spool", str(spool), "correlate", ident),
        }
        names = list(cmds)
        codes: dict[str, int] = {}
        for name in names:  # warm-up: byte-code caches, page cache of the index
            codes[name] = run_once(cmds[name], root)[2]
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(args.runs):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                dt, c, rc = run_once(cmds[name], root)
                wall[name].append(dt)
                cpu[name].append(c)
                codes[name] = rc
            log(f"rep {rep + 1}: " + ", ".join(f"{n} {wall[n][-1] * 1000:.0f} ms" for n in names))
        imports = {n: importtime(cmds[n], root) for n in names} if args.importtime else {}
        counts = {n: instructions(cmds[n], root) for n in names} if args.instructions else {}
        machine = machine_basics(all_cpus=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    floor = statistics.median(wall["python -c pass"])
    print(
        f"\npoetctl start-up bench: {args.runs} reps, readers on {spool} "
        f"(python {machine['python']}, {machine['nproc']} CPUs, load {machine['loadavg'][0]:.1f})"
    )
    print(f"{'command':<16}{'median':>10}{'cpu med':>10}{'ratio':>8}  verdict   each rep (ms)")
    report: dict[str, Any] = {"runs": args.runs, "machine": machine, "results": {}}
    for name in names:
        med = statistics.median(wall[name])
        ratio = med / floor
        verdict = "" if name == "python -c pass" else mark(ratio <= TARGET_RATIO)
        if codes[name]:
            verdict += f" (exit {codes[name]})"
        reps = " ".join(f"{x * 1000:.0f}" for x in wall[name])
        print(
            f"{name:<16}{med * 1000:>7.1f} ms{statistics.median(cpu[name]) * 1000:>7.1f} ms{ratio:>7.2f}x  "
            f"{verdict:<9} {reps}"
        )
        report["results"][name] = {"wall_s": wall[name], "cpu_s": cpu[name], "ratio": ratio, "rc": codes[name]}
    print(f"target: each command <= {TARGET_RATIO:g}x 'python -c pass' (median wall, same run)")
    if counts:
        base = counts["python -c pass"]
        print("\ninstructions (callgrind, one whole process each):")
        for name, n in counts.items():
            if n is None:
                print(f"  {name:<16}(valgrind not found or failed)")
                continue
            ratio = f"{n / base:.2f}x" if base else "?"
            print(f"  {name:<16}{n / 1e6:8.1f}M  {ratio}")
            report["results"][name]["instructions"] = n
    for name, imp in imports.items():
        print(
            f"\n-X importtime {name}: {imp['modules']} modules, {imp['self_total_ms']} ms self in total; "
            f"heavy: {', '.join(imp['heavy']) or 'none'}"
        )
        print("  top cumulative: " + ", ".join(f"{m} {t}" for m, t in imp["top_cumulative"]))
        print("  top self:       " + ", ".join(f"{m} {t}" for m, t in imp["top_self"]))
        report["results"][name]["importtime"] = imp
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
