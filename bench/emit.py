#!/usr/bin/env python3
"""Emit benchmarks for poetctl: batch throughput, single-emit latency, CLI start-up.

Usage::

    .venv/bin/python bench/emit.py [--events N] [--batch-size B] [--only batch,large] [--json]

It only measures and prints; it asserts nothing and exits 0 unless it cannot
run at all. Figures (targets in brackets):

1. Batch emit, durable and validated: ``EventRouter(spool).emit_many`` of N
   drift.detected events in batches of B.                        [>= 10,000 ev/s]
2. Bare loop on the same filesystem: per event open(O_EXCL)+write, one
   ``group_sync`` per batch (the product's primitive), close, rename each, fsync
   the destination directory; its tmp files go into the product spool's own
   ``events/tmp``. Each of ``--reps`` reps interleaves the product's and the
   bare loop's batches one for one; the medians of the reps are compared.
                                                              [product/bare >= 0.85]
1b/2b. The same pair with large events: ``system.metrics`` payloads of 500
   metrics (~14 KiB each) in batches of ``--large-batch``; MB/s printed.
                                                              [product/bare >= 0.8]
3. Single durable ``router.emit`` latency: p50/p95/p99/max.         [p99 <= 5 ms]
4. ``poetctl emit`` as a whole process vs ``python -c pass``.      [ratio <= 8x]

All scratch directories live in one ``tempfile.mkdtemp`` directory on the
repo's filesystem (the repo's parent by default, ``--tmp-dir`` to override),
removed at the end, after the figures are printed. Nothing is deleted between
measurements: on ext4 without a journal the inode allocator skips inodes freed
in the last ~60-300 s, and each file creation then scans past them (up to
~0.7 ms per create), so deleting mid-run would slow down what follows. The
"create probe" figures show what a bare create costs at the time; when they
are high the absolute figures are pessimistic (``--settle`` waits for them).
"""

# The bench measures raw syscalls, so os.* calls on str paths are deliberate.

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# bench/ is on sys.path (scripts run as `python bench/X.py`), so the shared helpers import directly.
from _common import (
    REPO,
    clean_env,
    create_probe,
    ensure_poetctl_importable,
    fmt_loadavg,
    loadavg,
    make_log,
    make_scratch,
    mark,
    mount_of,
    nproc,
    percentile,
    pick_base,
    poetctl_cmd,
    remove_scratch,
    time_cmd,
)

SAMPLE = REPO / "tests" / "samples" / "drift.detected.json"
EVENT_TYPE = "drift.detected"
LARGE_TYPE = "system.metrics"
LARGE_KEYS = 500  # ~14 KiB per event: the issue 14 byte-throughput case
ITEMS = ("batch", "large", "latency", "process")

ensure_poetctl_importable()

import poetctl  # noqa: E402
from poetctl import EventRouter  # noqa: E402
from poetctl.backends.fs.writer import group_sync  # noqa: E402
from poetctl.ids import uuid7  # noqa: E402
from poetctl.spool import SpoolLayout  # noqa: E402

O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

TARGET_EPS = 10_000
TARGET_RATIO = 0.85
TARGET_LARGE_RATIO = 0.8
TARGET_P99_MS = 5.0
TARGET_PROC_RATIO = 8.0
SLOW_CREATE_US = 150.0
PROBE_FILES = 300


log = make_log("bench", tolerant=True)


# -- machine context -----------------------------------------------------------
def machine_context(base: Path) -> dict[str, Any]:
    def version_of(dist: str) -> str | None:
        try:
            from importlib.metadata import version

            return version(dist)
        except Exception:
            return None

    return {
        "nproc": nproc(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "executable": sys.executable,
        "kernel": platform.release(),
        "poetctl": getattr(poetctl, "__version__", "?"),
        "orjson": version_of("orjson"),
        "jsonschema_rs": version_of("jsonschema-rs"),
        "loadavg": loadavg(),
        "tmp_base": str(base),
        "fs": mount_of(base),
        "same_device_as_repo": os.stat(base).st_dev == os.stat(REPO).st_dev,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


# -- inputs --------------------------------------------------------------------
def load_base_payload() -> dict[str, Any]:
    with open(SAMPLE, "rb") as fh:
        payload: dict[str, Any] = json.load(fh)["valid"][1]
    return payload


def make_payloads(base: dict[str, Any], start: int, count: int) -> list[dict[str, Any]]:
    """Fresh payload dicts (nested dict copied too); execution_id and drift_score vary."""
    chars = base["data_characteristics"]
    out = []
    for i in range(start, start + count):
        p = dict(base)
        p["data_characteristics"] = dict(chars)
        p["execution_id"] = f"{i:08x}-8a4d-4e2f-9c1a-{(i * 2654435761) & 0xFFFFFFFFFFFF:012x}"
        p["drift_score"] = round((i * 7919 % 10_000) / 10_000, 4)
        out.append(p)
    return out


def make_large_payloads(start: int, count: int) -> list[dict[str, Any]]:
    """system.metrics payloads of LARGE_KEYS metrics each (~14 KiB as stored); the values vary."""
    names = [f"metric_{k:03d}_p99" for k in range(LARGE_KEYS)]
    out = []
    for i in range(start, start + count):
        metrics = {name: round(((i * LARGE_KEYS + k) * 7919 % 1_000_003) / 97.0, 4) for k, name in enumerate(names)}
        out.append({"service": "bench", "host": "bench-host", "window_seconds": 60, "metrics": metrics})
    return out


class Case:
    """One alternating product/bare pair: what is emitted and how the payloads are made."""

    def __init__(self, name: str, event_type: str, make: Callable[[int, int], list[dict[str, Any]]]) -> None:
        self.name, self.event_type, self.make = name, event_type, make


def make_batches(case: Case, n: int, b: int, offset: int) -> list[list[Any]]:
    """One fresh list of (type, payload) tuples per batch."""
    return [[(case.event_type, p) for p in case.make(offset + s, min(b, n - s))] for s in range(0, n, b)]


def timed(n: int, fn: Callable[[], None]) -> dict[str, float]:
    """Run ``fn``; events/s plus this process's user and system CPU per event."""
    c0 = os.times()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    c1 = os.times()
    return {
        "eps": n / dt,
        "wall_us": dt / n * 1e6,
        "user_us": (c1.user - c0.user) / n * 1e6,
        "sys_us": (c1.system - c0.system) / n * 1e6,
    }


class Tally:
    """Wall and CPU time summed over one side's batches of a rep (the batches interleave with the other side's)."""

    def __init__(self) -> None:
        self.n = 0
        self.wall = self.user = self.sys = 0.0

    def run(self, n: int, fn: Callable[[], None]) -> None:
        c0 = os.times()
        t0 = time.perf_counter()
        fn()
        self.wall += time.perf_counter() - t0
        c1 = os.times()
        self.user += c1.user - c0.user
        self.sys += c1.system - c0.system
        self.n += n

    def result(self) -> dict[str, float]:
        n = self.n
        return {
            "eps": n / self.wall,
            "wall_us": self.wall / n * 1e6,
            "user_us": self.user / n * 1e6,
            "sys_us": self.sys / n * 1e6,
        }


# -- 1. product batch emit -------------------------------------------------------
def product_batches(router: EventRouter, case: Case, n: int, b: int, offset: int) -> list[Callable[[], None]]:
    """One ``emit_many`` call per batch (payloads made beforehand, outside the timing)."""
    return [lambda batch=batch: router.emit_many(batch) for batch in make_batches(case, n, b, offset)]  # type: ignore[misc]


def cpu_only(case: Case, spool: Path, count: int = 5_000) -> float:
    """CPU microseconds per event for validate + seal + serialize alone (no I/O; process time, not wall)."""
    router = EventRouter(spool=spool)  # build() does no I/O; this spool is never created
    payloads = case.make(10_000_000, count)
    ev = router.build(case.event_type, payloads[0])[0]  # compile the schemas outside the timing
    # The stored line: Event.line() where the product has it (serialised once), else to_json() as before.
    line = getattr(type(ev), "line", None) or type(ev).to_json
    t0 = time.process_time()
    for p in payloads:
        line(router.build(case.event_type, p)[0])
    return (time.process_time() - t0) / count * 1e6


# -- 2. bare loop ----------------------------------------------------------------
def sample_bytes(case: Case, spool: Path, count: int) -> list[bytes]:
    """Events serialized exactly as the product stores them (built, never committed)."""
    router = EventRouter(spool=spool)
    payloads = case.make(20_000_000, count)
    out = []
    for p in payloads:
        ev = router.build(case.event_type, p)[0]
        line = getattr(ev, "line", None)
        out.append(line() if line is not None else ev.to_json() + b"\n")
    return out


def bare_batches(tmp: Path, dest: Path, datas: list[bytes], n: int, b: int) -> list[Callable[[], None]]:
    """The bare loop's batches: per event open(O_EXCL)+write, one group_sync, close, rename each, fsync ``dest``."""
    names = [uuid7() for _ in range(n)]
    tmp_paths = [f"{tmp}/.{x}.tmp" for x in names]
    dest_paths = [f"{dest}/{x}.json" for x in names]
    nd, dest_s = len(datas), str(dest)

    def batch(s: int, e: int) -> None:
        fds = []
        for j in range(s, e):
            fd = os.open(tmp_paths[j], O_CREATE, 0o640)
            os.write(fd, datas[j % nd])
            fds.append(fd)
        group_sync(tmp, fds)
        for fd in fds:
            os.close(fd)
        for j in range(s, e):
            os.rename(tmp_paths[j], dest_paths[j])
        dfd = os.open(dest_s, O_DIR)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    return [lambda s=s: batch(s, min(s + b, n)) for s in range(0, n, b)]  # type: ignore[misc]


# -- 3. single emit latency --------------------------------------------------------
def run_latency(spool: Path, base: dict[str, Any], calls: int, warmup: int) -> dict[str, Any]:
    router = EventRouter(spool=spool)
    payloads = make_payloads(base, 30_000_000, calls + warmup)
    for p in payloads[:warmup]:
        router.emit(EVENT_TYPE, p)
    lat = []
    clock = time.perf_counter_ns
    t_all = time.perf_counter()
    for p in payloads[warmup:]:
        t0 = clock()
        router.emit(EVENT_TYPE, p)
        lat.append(clock() - t0)
    total = time.perf_counter() - t_all
    ms = sorted(x / 1e6 for x in lat)
    return {
        "calls": calls,
        "warmup": warmup,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
        "events_per_s": calls / total,
        "target_met": percentile(ms, 99) <= TARGET_P99_MS,
    }


# -- 4. whole process ----------------------------------------------------------------
PASS = "python -c pass"
MODULE = "python -m poetctl emit"
SCRIPT = "poetctl emit (console script)"


def run_process(root: Path, base: dict[str, Any], runs: int) -> dict[str, Any]:
    root.mkdir()
    spool = root / "spool"
    SpoolLayout(spool).init()  # `poetctl emit` only writes into an existing spool
    payload_file = root / "payload.json"
    payload_file.write_bytes(json.dumps(base).encode())
    py = sys.executable
    emit_args = ["--spool", str(spool), "emit", EVENT_TYPE, str(payload_file)]
    cmds: dict[str, list[str]] = {
        PASS: [py, "-c", "pass"],
        MODULE: poetctl_cmd(*emit_args),
    }
    script = Path(py).with_name("poetctl")
    if not script.exists():
        script = REPO / ".venv" / "bin" / "poetctl"
    if script.exists():
        cmds[SCRIPT] = [str(script), *emit_args]

    # Hermetic: no POET_* variables, a cwd without poet.toml. Bytecode is cached (under
    # the scratch dir, so the repo gets no __pycache__) as for an installed tool; when
    # the environment sets PYTHONDONTWRITEBYTECODE, that case is measured separately.
    inherited = clean_env()
    cached = dict(inherited)
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    cached["PYTHONPYCACHEPREFIX"] = str(root / "pycache")

    def series(label: str, env: dict[str, str], names: list[str], n: int) -> dict[str, Any]:
        for name in names:  # warm-up: fills the bytecode cache
            time_cmd(cmds[name], env, root)
        times: dict[str, list[float]] = {name: [] for name in names}
        failures: dict[str, str] = {}
        for _ in range(n):
            for name in names:  # interleaved, so drift hits every command alike
                dt, rc, err = time_cmd(cmds[name], env, root)
                times[name].append(dt)
                if rc != 0 and name not in failures:
                    failures[name] = f"exit {rc}: {err.decode(errors='replace').strip()[-300:]}"
        med = {name: statistics.median(v) for name, v in times.items()}
        return {
            "env": label,
            "runs": n,
            "median_s": med,
            "min_s": {name: min(v) for name, v in times.items()},
            "ratio_vs_pass": {name: med[name] / med[PASS] for name in names if name != PASS},
            "failures": failures,
        }

    out: dict[str, Any] = {"spool": str(spool), "commands": cmds, "series": []}
    out["series"].append(series("bytecode cached", cached, list(cmds), runs))
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        label = "as inherited: PYTHONDONTWRITEBYTECODE=1, poetctl compiled every run"
        out["series"].append(series(label, inherited, [PASS, MODULE], max(5, runs // 3)))
    pending = spool / "events" / "pending"
    out["events_written"] = len(os.listdir(pending)) if pending.is_dir() else 0
    return out


# -- report ----------------------------------------------------------------------------
def render_pair(b: dict[str, Any], title: str, target: float) -> list[str]:
    pm, bm = b["product_eps_median"], b["bare_eps_median"]
    size = b["event_bytes_mean"]
    pair = ", ".join(f"{x:.2f}" for x in b["pair_ratios"])
    return [
        f"1. batch emit of {title}, durable + validated: EventRouter.emit_many"
        f" (N={b['events']}, B={b['batch_size']}, {size:,.0f} B/event)",
        f"   product  median {pm:>8,.0f} ev/s {pm * size / 1e6:7.1f} MB/s  (runs {fmt_list(b['product_eps'])})"
        + (f"   [>= {TARGET_EPS:,}: {mark(pm >= TARGET_EPS)}]" if b["name"] == "batch" else ""),
        "2. bare loop: open+write, group_sync, close, rename, fsync dir (same bytes)",
        f"   bare     median {bm:>8,.0f} ev/s {bm * size / 1e6:7.1f} MB/s  (runs {fmt_list(b['bare_eps'])})",
        f"   ratio of medians product/bare = {b['ratio']:.2f}   [>= {target}: {mark(b['ratio'] >= target)}]"
        f"; per rep: {pair}",
        f"   per event (median run): product {1e6 / pm:.1f} us wall "
        f"({b['product_cpu_us']['user']:.1f} user + {b['product_cpu_us']['sys']:.1f} sys), "
        f"bare {1e6 / bm:.1f} us ({b['bare_cpu_us']['user']:.1f} user + "
        f"{b['bare_cpu_us']['sys']:.1f} sys)",
        f"   of which validate+seal+serialize alone (no I/O): {b['cpu_us_per_event']:.1f} us CPU",
        "",
    ]


def fmt_list(vals: Sequence[float], spec: str = ",.0f") -> str:
    return ", ".join(format(v, spec) for v in vals)


def render(r: dict[str, Any]) -> str:
    m, p = r["machine"], r["params"]
    fs = m["fs"]
    journal = fs.get("ext4_journal")
    jtxt = "" if journal is None else (", journal" if journal else ", NO journal")
    load = fmt_loadavg(m["loadavg"])
    probes = r["create_probe_us"]
    slow = max(probes) > SLOW_CREATE_US
    lines = [
        "poetctl emit benchmark",
        "=" * 78,
        f"machine   nproc={m['nproc']} (cpu_count {m['cpu_count']}), kernel {m['kernel']}, loadavg {load}",
        f"python    {m['python_impl']} {m['python']} ({m['executable']})",
        f"versions  poetctl {m['poetctl']}, orjson {m['orjson']}, jsonschema-rs {m['jsonschema_rs']}",
        f"scratch   {m['tmp_base']}",
        f"fs        {fs['fstype']}{jtxt} ({fs['source']} on {fs['mount_point']}; {fs['options']})",
        f"          same device as the repo: {'yes' if m['same_device_as_repo'] else 'NO'}",
        f"          create probe (us per bare create, before each rep): {fmt_list(probes)}"
        + ("  <- slow: recently freed inodes; absolute figures pessimistic" if slow else ""),
        *(
            [f"          settle probes (us): {fmt_list(r['settle_probes_us'])}"]
            if len(r.get("settle_probes_us", [])) > 1
            else []
        ),
        f"params    N={p['events']} B={p['batch_size']} reps={p['reps']} calls={p['calls']} runs={p['runs']}",
        "",
    ]
    for key, title, target in (
        ("batch", "small events", TARGET_RATIO),
        ("large", "large events", TARGET_LARGE_RATIO),
    ):
        if key in r:
            lines += render_pair(r[key], title, target)
    lt = r.get("latency")
    lines += (
        []
        if lt is None
        else [
            f"3. single durable emit latency ({lt['calls']} calls after {lt['warmup']} warm-up)",
            f"   p50 {lt['p50_ms']:.2f} ms  p95 {lt['p95_ms']:.2f} ms  p99 {lt['p99_ms']:.2f} ms  "
            f"max {lt['max_ms']:.2f} ms  ({lt['events_per_s']:,.0f} ev/s)"
            f"   [p99 <= {TARGET_P99_MS:g} ms: {mark(lt['target_met'])}]",
            "",
        ]
    )
    if "process" not in r:
        lines.append(f"measured in {r['elapsed_s']:.1f} s; removing the scratch files follows")
        return "\n".join(lines)
    pr = r["process"]
    lines.append(
        "4. whole process, median wall time (spool on the same device as item 1: "
        f"{'yes' if pr['device_ok'] else 'NO'}; {fs['fstype']})"
    )
    for s in pr["series"]:
        lines.append(f"   [{s['env']}; {s['runs']} interleaved runs each]")
        for name, t in s["median_s"].items():
            extra = ""
            if name in s["ratio_vs_pass"]:
                ratio = s["ratio_vs_pass"][name]
                extra = f"  {ratio:5.1f}x  [<= {TARGET_PROC_RATIO:g}x: {mark(ratio <= TARGET_PROC_RATIO)}]"
            lines.append(f"   {name:<30} {t * 1000:7.1f} ms (min {s['min_s'][name] * 1000:6.1f}){extra}")
        for name, msg in s["failures"].items():
            lines.append(f"   !! {name} failed: {msg}")
    lines.append(f"measured in {r['elapsed_s']:.1f} s; removing the scratch files follows")
    return "\n".join(lines)


# -- driver ------------------------------------------------------------------------------
def run_pair(root: Path, case: Case, n: int, b: int, reps: int, probes: list[float]) -> dict[str, Any]:
    """``reps`` reps of ``case``, product and bare batches interleaved; medians and the per-rep ratios.

    Fairness, both ways: the disk here swings by 2-10x within seconds (other
    work, freed-inode scans after mass deletes), so whole-run alternation left
    one side on a slow stretch and the other on a fast one. Within a rep the
    two sides' batches alternate one for one (the first side alternates too),
    and the bare loop creates its tmp files in the product's own ``events/tmp``
    and renames them into a sibling of ``pending/``: on ext4 a file's inode is
    allocated near its directory, and create costs differed by up to 3x
    between two fresh directories of one run. Both sides get one untimed
    warm-up batch (the product's compiles its schemas and makes the spool).
    """
    datas = sample_bytes(case, root / "unused-spool", min(b, n))
    cpu_us = cpu_only(case, root / "unused-spool", max(200, min(5_000, 2_000_000 // len(datas[0]))))
    spool = root / f"spool-{case.name}"
    router = EventRouter(spool=spool)
    router.emit_many(make_batches(case, min(b, 10), b, 40_000_000)[0])
    tmp, dest = router.layout.tmp, router.layout.events / "bare-dest"
    dest.mkdir()
    for warm in bare_batches(tmp, dest, datas, min(b, 10), b):
        warm()
    prod: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    for k in range(reps):
        probes.append(create_probe(root / f"probe-{case.name}-{k}", PROBE_FILES, O_CREATE))
        p_runs = product_batches(router, case, n, b, k * n)
        b_runs = bare_batches(tmp, dest, datas, n, b)
        pt, bt = Tally(), Tally()
        for j, (p_run, b_run) in enumerate(zip(p_runs, b_runs, strict=True)):
            size = min(b, n - j * b)
            # Alternate which goes first, so a drift within a pair hits both alike.
            if (j + k) % 2 == 0:
                pt.run(size, p_run)
                bt.run(size, b_run)
            else:
                bt.run(size, b_run)
                pt.run(size, p_run)
        prod.append(pt.result())
        bare.append(bt.result())
        log(
            f"{case.name} rep {k + 1}/{reps}: product {prod[-1]['eps']:,.0f} ev/s, bare {bare[-1]['eps']:,.0f} ev/s "
            f"({prod[-1]['eps'] / bare[-1]['eps']:.2f})"
        )
    pe, be = [x["eps"] for x in prod], [x["eps"] for x in bare]
    pm, bm = statistics.median(pe), statistics.median(be)
    p_med = sorted(prod, key=lambda x: x["eps"])[len(prod) // 2]
    b_med = sorted(bare, key=lambda x: x["eps"])[len(bare) // 2]
    target = TARGET_RATIO if case.name == "batch" else TARGET_LARGE_RATIO
    return {
        "name": case.name,
        "events": n,
        "batch_size": b,
        "product_eps": pe,
        "bare_eps": be,
        "pair_ratios": [p / q for p, q in zip(pe, be, strict=True)],
        "product_runs": prod,
        "bare_runs": bare,
        "product_eps_median": pm,
        "bare_eps_median": bm,
        "ratio": pm / bm,
        "product_cpu_us": {"user": p_med["user_us"], "sys": p_med["sys_us"]},
        "bare_cpu_us": {"user": b_med["user_us"], "sys": b_med["sys_us"]},
        "cpu_us_per_event": cpu_us,
        "event_bytes_mean": statistics.fmean(len(d) for d in datas),
        "product_mb_s_median": pm * statistics.fmean(len(d) for d in datas) / 1e6,
        "target_eps_met": pm >= TARGET_EPS,
        "target_ratio_met": pm / bm >= target,
    }


def settle(root: Path, seconds: float) -> list[float]:
    """Wait (at most ``seconds``) until bare creates are fast again; return the probes."""
    probes = [create_probe(root / "settle-0", PROBE_FILES, O_CREATE)]
    deadline = time.monotonic() + seconds
    while probes[-1] > SLOW_CREATE_US and time.monotonic() < deadline:
        log(f"create probe {probes[-1]:.0f} us/file; waiting for the filesystem to settle")
        time.sleep(5)
        probes.append(create_probe(root / f"settle-{len(probes)}", PROBE_FILES, O_CREATE))
    return probes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="poetctl emit benchmarks (see the module docstring for what is measured).")
    ap.add_argument("--events", type=int, default=50_000, help="events per batch run (50000)")
    ap.add_argument("--batch-size", type=int, default=1_000, help="events per emit_many (1000)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout; text to stderr")
    ap.add_argument("--reps", type=int, default=5, help="alternating product/bare runs (5)")
    ap.add_argument("--large-events", type=int, default=10_000, help="events per large-event run (10000)")
    ap.add_argument("--large-batch", type=int, default=200, help="large events per emit_many (200)")
    ap.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)} (all)")
    ap.add_argument("--calls", type=int, default=2_000, help="single-emit latency calls (2000)")
    ap.add_argument("--runs", type=int, default=30, help="process runs per command (30)")
    ap.add_argument("--tmp-dir", help="parent of the scratch dir (default: the repo's parent)")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="wait up to this many seconds for bare file creation to be fast before item 1",
    )
    args = ap.parse_args(argv)
    if min(args.events, args.batch_size, args.reps, args.calls, args.runs, args.large_events, args.large_batch) < 1:
        ap.error("counts must be >= 1")
    unknown = set(args.only.split(",")) - set(ITEMS)
    if unknown:
        ap.error(f"--only: unknown item(s) {', '.join(sorted(unknown))}; expected a subset of {','.join(ITEMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    base_payload = load_base_payload()
    n, b = args.events, args.batch_size
    only = set(args.only.split(","))
    report: dict[str, Any] = {
        "params": {
            "events": n,
            "batch_size": b,
            "reps": args.reps,
            "calls": args.calls,
            "runs": args.runs,
        }
    }
    root = make_scratch("poetctl-bench-", pick_base(args.tmp_dir))
    done = False
    try:
        report["machine"] = machine_context(root)
        report["settle_probes_us"] = settle(root, args.settle)
        log(f"scratch {root} on {report['machine']['fs']['fstype']}")

        # 1 + 2, alternating; nothing is deleted until the end.
        cases = {
            "batch": (Case("batch", EVENT_TYPE, lambda s, c: make_payloads(base_payload, s, c)), n, b),
            "large": (Case("large", LARGE_TYPE, make_large_payloads), args.large_events, args.large_batch),
        }
        probes: list[float] = []
        for key, (case, cn, cb) in cases.items():
            if key in only:
                report[key] = run_pair(root, case, cn, cb, args.reps, probes)
        report["create_probe_us"] = probes or [create_probe(root / "probe", PROBE_FILES, O_CREATE)]

        if "latency" in only:
            log(f"item 3: {args.calls} single emits")
            report["latency"] = run_latency(root / "latency", base_payload, args.calls, 100)

        if "process" in only:
            log(f"item 4: {args.runs} interleaved process runs per command")
            proc = run_process(root / "process", base_payload, args.runs)
            proc["device_ok"] = os.stat(root / "process" / "spool").st_dev == os.stat(root).st_dev
            proc["target_met"] = all(r <= TARGET_PROC_RATIO for r in proc["series"][0]["ratio_vs_pass"].values())
            report["process"] = proc
        report["elapsed_s"] = time.perf_counter() - t_start
        # The figures first: removing ~6 x N files takes a while on this disk.
        print(render(report), file=sys.stderr if args.json else sys.stdout, flush=True)
        done = True
    finally:
        log(f"removing {root}" + ("" if done else " after an error"))
        # Threaded unlinks overlap the synchronous discards; os.sync() after (see remove_scratch).
        report["cleanup_s"] = remove_scratch(root, parallel=True)
        log(f"cleanup {report['cleanup_s']:.1f} s; total {time.perf_counter() - t_start:.1f} s")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
