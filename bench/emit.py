#!/usr/bin/env python3
"""Emit benchmarks for poetctl: throughput, latency and CLI start-up.

Usage::

    .venv/bin/python bench/emit.py [--events N] [--batch-size B] [--json]

It only measures and prints; it asserts nothing and always exits 0 unless it
cannot run at all. Figures (targets in brackets):

1. Batch emit, durable and validated: ``EventRouter(spool).emit_many`` of N
   drift.detected events in batches of B.                       [>= 10,000 ev/s]
2. Bare loop on the same filesystem: per event open(O_EXCL)+write+close, one
   ``group_sync`` per batch (the product's primitive), rename each, fsync the
   destination directory. Product and bare run alternately ``--reps`` times;
   medians are compared.                                     [product/bare >= 0.8]
3. Single durable ``router.emit`` latency: p50/p95/p99/max.        [p99 <= 5 ms]
4. ``poetctl emit`` as a whole process vs ``python -c pass``.    [ratio <= 8x]

All scratch directories live in one ``tempfile.mkdtemp`` directory on the
repo's filesystem (the repo's parent by default, ``--tmp-dir`` to override)
and are removed at the end. Nothing is deleted between measurements: on ext4
without a journal, inodes freed in the last 60-300 s are skipped by the inode
allocator, which makes every file creation scan them (up to ~0.7 ms per
create), so deleting mid-run would slow down the measurements that follow.
The "create probe" line at the top shows what a bare create costs right now.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "samples" / "drift.detected.json"
EVENT_TYPE = "drift.detected"

try:
    import poetctl
except ImportError:  # run with an interpreter that lacks the editable install
    sys.path.insert(0, str(REPO))
    import poetctl

from poetctl import EventRouter
from poetctl.ids import uuid7
from poetctl.spool.writer import group_sync

O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

TARGET_EPS = 10_000
TARGET_RATIO = 0.8
TARGET_P99_MS = 5.0
TARGET_PROC_RATIO = 8.0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- machine context ---------------------------------------------------------
def _unescape_mount(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_of(path: Path) -> dict[str, Any]:
    """The /proc/mounts entry that holds ``path`` (longest mount point, last mounted wins)."""
    real = os.path.realpath(path)
    best: dict[str, Any] = {"mount_point": "?", "fstype": "?", "source": "?", "options": ""}
    best_len = -1
    try:
        with open("/proc/mounts") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        src, mp, fstype, opts = _unescape_mount(parts[0]), _unescape_mount(parts[1]), parts[2], parts[3]
        inside = real == mp or mp == "/" or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= best_len:
            best = {"mount_point": mp, "fstype": fstype, "source": src, "options": opts}
            best_len = len(mp)
    if best["fstype"] == "ext4":
        # jbd2 lists one entry per journalled device ("vda-8"); none means no journal.
        dev = os.path.basename(best["source"])
        try:
            journals = os.listdir("/proc/fs/jbd2")
            best["ext4_journal"] = any(j.startswith(dev + "-") for j in journals)
        except OSError:
            best["ext4_journal"] = None
    return best


def create_probe(directory: Path, count: int = 500) -> float:
    """Microseconds per bare O_EXCL create+close in ``directory`` (files are left in place)."""
    directory.mkdir()
    t0 = time.perf_counter()
    for i in range(count):
        os.close(os.open(f"{directory}/{i}", O_CREATE, 0o640))
    return (time.perf_counter() - t0) / count * 1e6


def machine_context(base: Path) -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        import orjson

        orjson_v = orjson.__version__
    except Exception:
        orjson_v = None
    try:
        from importlib.metadata import version

        jsrs = version("jsonschema-rs")
    except Exception:
        jsrs = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "executable": sys.executable,
        "kernel": platform.release(),
        "poetctl": getattr(poetctl, "__version__", "?"),
        "orjson": orjson_v,
        "jsonschema_rs": jsrs,
        "loadavg": load,
        "tmp_base": str(base),
        "fs": mount_of(base),
        "same_device_as_repo": os.stat(base).st_dev == os.stat(REPO).st_dev,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


# -- inputs ------------------------------------------------------------------
def load_base_payload() -> dict[str, Any]:
    with open(SAMPLE, "rb") as fh:
        return json.load(fh)["valid"][1]  # type: ignore[no-any-return]


def make_payloads(base: dict[str, Any], start: int, count: int) -> list[dict[str, Any]]:
    """Fresh payload dicts (nested dict copied too), execution_id and drift_score varied."""
    chars = base["data_characteristics"]
    out = []
    for i in range(start, start + count):
        p = dict(base)
        p["data_characteristics"] = dict(chars)
        p["execution_id"] = f"{i:08x}-8a4d-4e2f-9c1a-{(i * 2654435761) & 0xFFFFFFFFFFFF:012x}"
        p["drift_score"] = round((i * 7919 % 10_000) / 10_000, 4)
        out.append(p)
    return out


def make_batches(base: dict[str, Any], n: int, b: int, offset: int) -> list[list[tuple[str, dict[str, Any]]]]:
    """Fresh lists of (type, payload) tuples, one per batch."""
    return [
        [(EVENT_TYPE, p) for p in make_payloads(base, offset + s, min(b, n - s))]
        for s in range(0, n, b)
    ]


def percentile(sorted_vals: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_vals:
        return math.nan
    k = max(1, math.ceil(p / 100 * len(sorted_vals)))
    return sorted_vals[k - 1]


# -- 1. product batch emit ---------------------------------------------------
def run_product(spool: Path, base: dict[str, Any], n: int, b: int, offset: int) -> float:
    batches = make_batches(base, n, b, offset)
    router = EventRouter(spool=spool)
    t0 = time.perf_counter()
    for batch in batches:
        router.emit_many(batch)
    dt = time.perf_counter() - t0
    return n / dt


def cpu_only(base: dict[str, Any], spool: Path, count: int = 5_000) -> float:
    """Microseconds per event for validate + seal + serialize, no I/O (diagnostic)."""
    router = EventRouter(spool=spool)  # build() does no I/O; the spool is never created
    payloads = make_payloads(base, 10_000_000, count)
    router.build(EVENT_TYPE, payloads[0])  # compile the schemas outside the timing
    t0 = time.perf_counter()
    for p in payloads:
        ev, _ = router.build(EVENT_TYPE, p)
        ev.to_json()
    return (time.perf_counter() - t0) / count * 1e6


# -- 2. bare loop ------------------------------------------------------------
def sample_bytes(base: dict[str, Any], spool: Path, count: int) -> list[bytes]:
    """Serialized events exactly like the product writes them (built, not committed)."""
    router = EventRouter(spool=spool)
    return [router.build(EVENT_TYPE, p)[0].to_json() + b"\n" for p in make_payloads(base, 20_000_000, count)]


def run_bare(root: Path, datas: list[bytes], n: int, b: int) -> float:
    tmp = root / "tmp"
    dest = root / "dest"
    root.mkdir()
    tmp.mkdir()
    dest.mkdir()
    names = [uuid7() for _ in range(n)]
    tmp_paths = [f"{tmp}/.{x}.tmp" for x in names]
    dest_paths = [f"{dest}/{x}.json" for x in names]
    nd = len(datas)
    dest_s = str(dest)
    t0 = time.perf_counter()
    for s in range(0, n, b):
        e = min(s + b, n)
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
    dt = time.perf_counter() - t0
    return n / dt


# -- 3. single emit latency --------------------------------------------------
def run_latency(spool: Path, base: dict[str, Any], calls: int, warmup: int) -> dict[str, float]:
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
    }


# -- 4. whole process --------------------------------------------------------
def time_cmd(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    cp = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    return time.perf_counter() - t0, cp.returncode, cp.stderr


def run_process(root: Path, base: dict[str, Any], runs: int) -> dict[str, Any]:
    root.mkdir()
    spool = root / "spool"
    payload_file = root / "payload.json"
    payload_file.write_bytes(json.dumps(base).encode())
    py = sys.executable
    cmds: dict[str, list[str]] = {
        "python -c pass": [py, "-c", "pass"],
        "python -m poetctl emit": [py, "-m", "poetctl", "--spool", str(spool), "emit", EVENT_TYPE, str(payload_file)],
    }
    script = Path(py).with_name("poetctl")
    if not script.exists():
        script = REPO / ".venv" / "bin" / "poetctl"
    if script.exists():
        cmds["poetctl emit (console script)"] = [str(script), "--spool", str(spool), "emit", EVENT_TYPE, str(payload_file)]

    # Hermetic environment: no POET_* overrides, cwd without a poet.toml. Bytecode is
    # cached (in the scratch dir, so the repo gets no __pycache__) like an installed
    # tool's would be; PYTHONDONTWRITEBYTECODE from this sandbox is dropped for the
    # main figures and measured separately below when it is set.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    cached = dict(inherited)
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    cached["PYTHONPYCACHEPREFIX"] = str(root / "pycache")

    def series(envname: str, env: dict[str, str], names: list[str], n: int) -> dict[str, Any]:
        for name in names:  # warm-up: fills the bytecode cache, creates the spool tree
            time_cmd(cmds[name], env, root)
        times: dict[str, list[float]] = {name: [] for name in names}
        failures: dict[str, str] = {}
        for _ in range(n):
            for name in names:  # interleaved
                dt, rc, err = time_cmd(cmds[name], env, root)
                times[name].append(dt)
                if rc != 0 and name not in failures:
                    failures[name] = f"exit {rc}: {err.decode(errors='replace').strip()[-300:]}"
        med = {name: statistics.median(v) for name, v in times.items()}
        base_t = med["python -c pass"]
        return {
            "env": envname,
            "runs": n,
            "median_s": med,
            "min_s": {name: min(v) for name, v in times.items()},
            "ratio_vs_pass": {name: med[name] / base_t for name in names if name != "python -c pass"},
            "failures": failures,
        }

    out = {"spool": str(spool), "device_ok": None, "series": []}
    out["series"].append(series("bytecode cached", cached, list(cmds), runs))
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        out["series"].append(
            series("as inherited (PYTHONDONTWRITEBYTECODE=1: poetctl recompiled each run)", inherited,
                   ["python -c pass", "python -m poetctl emit"], max(5, runs // 3))
        )
    out["events_written"] = len(os.listdir(spool / "events" / "pending")) if spool.exists() else 0
    return out


# -- report ------------------------------------------------------------------
def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    fs = m["fs"]
    journal = fs.get("ext4_journal")
    jtxt = "" if journal is None else (", journal" if journal else ", NO journal")
    lines = [
        "poetctl emit benchmark",
        "=" * 72,
        f"machine   nproc={m['nproc']} (cpu_count {m['cpu_count']}), kernel {m['kernel']}, loadavg "
        + (" ".join(f"{x:.2f}" for x in m["loadavg"]) if m["loadavg"] else "?"),
        f"python    {m['python_impl']} {m['python']} ({m['executable']})",
        f"versions  poetctl {m['poetctl']}, orjson {m['orjson']}, jsonschema-rs {m['jsonschema_rs']}",
        f"scratch   {m['tmp_base']} on {fs['fstype']}{jtxt} ({fs['source']} at {fs['mount_point']}), "
        f"same device as repo: {'yes' if m['same_device_as_repo'] else 'NO'}",
        f"          create probe: {r['create_probe_us']:.0f} us per bare O_EXCL create+close"
        + ("  (slow: filesystem is skipping recently freed inodes; figures pessimistic)"
           if r["create_probe_us"] > 150 else ""),
        f"params    N={r['params']['events']} B={r['params']['batch_size']} reps={r['params']['reps']}",
        "",
    ]
    b = r["batch"]
    lines += [
        "1. batch emit, durable + validated (EventRouter.emit_many)",
        f"   product     median {b['product_eps_median']:>9,.0f} ev/s   runs "
        + ", ".join(f"{x:,.0f}" for x in b["product_eps"])
        + f"   [target >= {TARGET_EPS:,}: {mark(b['product_eps_median'] >= TARGET_EPS)}]",
        f"   (diagnostic: validate+seal+serialize alone, no I/O: {b['cpu_us_per_event']:.1f} us/event"
        f" = {1e6 / b['cpu_us_per_event']:,.0f} ev/s)",
        "2. bare loop (open/write/close, group_sync, rename, fsync dir)",
        f"   bare        median {b['bare_eps_median']:>9,.0f} ev/s   runs " + ", ".join(f"{x:,.0f}" for x in b["bare_eps"]),
        f"   ratio product/bare = {b['ratio']:.2f}   [target >= {TARGET_RATIO}: {mark(b['ratio'] >= TARGET_RATIO)}]",
        f"   per event: product {1e6 / b['product_eps_median']:.1f} us, bare {1e6 / b['bare_eps_median']:.1f} us,"
        f" overhead {1e6 / b['product_eps_median'] - 1e6 / b['bare_eps_median']:.1f} us",
        "",
    ]
    lt = r["latency"]
    lines += [
        f"3. single durable emit latency ({lt['calls']} calls after {lt['warmup']} warm-up)",
        f"   p50 {lt['p50_ms']:.2f} ms  p95 {lt['p95_ms']:.2f} ms  p99 {lt['p99_ms']:.2f} ms  max {lt['max_ms']:.2f} ms"
        f"  mean {lt['mean_ms']:.2f} ms  ({lt['events_per_s']:,.0f} ev/s)"
        f"   [p99 <= {TARGET_P99_MS} ms: {mark(lt['p99_ms'] <= TARGET_P99_MS)}]",
        "",
    ]
    pr = r["process"]
    lines.append(f"4. whole process, median wall time (spool on same device as item 1: "
                 f"{'yes' if pr['device_ok'] else 'NO'})")
    for s in pr["series"]:
        lines.append(f"   [{s['env']}, {s['runs']} interleaved runs each]")
        for name, t in s["median_s"].items():
            extra = ""
            if name in s["ratio_vs_pass"]:
                ratio = s["ratio_vs_pass"][name]
                extra = f"   {ratio:5.1f}x pass   [<= {TARGET_PROC_RATIO:g}x: {mark(ratio <= TARGET_PROC_RATIO)}]"
            lines.append(f"   {name:<30} {t * 1000:7.1f} ms (min {s['min_s'][name] * 1000:.1f}){extra}")
        for name, msg in s["failures"].items():
            lines.append(f"   !! {name} failed: {msg}")
    lines.append(f"   events written by the CLI runs: {pr['events_written']}")
    lines.append(f"measurement time {r['elapsed_s']:.1f} s (removing the scratch files follows)")
    return "\n".join(lines)


def remove_tree(root: Path, workers: int = 16) -> None:
    """rm -rf ``root``, unlinking files from several threads.

    With the ``discard`` mount option and no journal every freed data block is
    discarded synchronously (~125 us per 700-byte file vs ~13 us for an empty
    one); parallel unlinks overlap those waits (about 3x faster here).
    """
    chunks: list[list[str]] = []
    for dirpath, _dirs, files in os.walk(root):
        paths = [os.path.join(dirpath, f) for f in files]
        chunks.extend(paths[i : i + 500] for i in range(0, len(paths), 500))

    def unlink_all(paths: list[str]) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(unlink_all, chunks))
    shutil.rmtree(root, ignore_errors=True)


def pick_base(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    repo_dev = os.stat(REPO).st_dev
    for cand in (REPO.parent, Path(tempfile.gettempdir())):
        try:
            if os.stat(cand).st_dev == repo_dev and os.access(cand, os.W_OK | os.X_OK):
                return cand
        except OSError:
            continue
    return REPO.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000, help="events per batch-emit run (default 50000)")
    ap.add_argument("--batch-size", type=int, default=1_000, help="events per emit_many call (default 1000)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (text goes to stderr)")
    ap.add_argument("--reps", type=int, default=3, help="alternating product/bare runs (default 3)")
    ap.add_argument("--calls", type=int, default=2_000, help="single-emit latency calls (default 2000)")
    ap.add_argument("--runs", type=int, default=30, help="process runs per command (default 30)")
    ap.add_argument("--tmp-dir", help="parent of the scratch dir (default: the repo's parent)")
    args = ap.parse_args(argv)
    if args.events < 1 or args.batch_size < 1 or args.reps < 1 or args.calls < 1 or args.runs < 1:
        ap.error("counts must be >= 1")

    t_start = time.perf_counter()
    base_payload = load_base_payload()
    base_dir = pick_base(args.tmp_dir)
    report: dict[str, Any] = {"params": {"events": args.events, "batch_size": args.batch_size, "reps": args.reps,
                                         "calls": args.calls, "runs": args.runs}}
    root = Path(tempfile.mkdtemp(prefix="poetctl-bench-", dir=base_dir))
    done = False
    try:
        report["machine"] = machine_context(root)
        report["create_probe_us"] = create_probe(root / "probe")
        log(f"scratch {root} ({report['machine']['fs']['fstype']}), create probe "
            f"{report['create_probe_us']:.0f} us/file")

        # 1 + 2: alternate product and bare runs; nothing is deleted until the end.
        datas = sample_bytes(base_payload, root / "unused-spool", min(args.batch_size, args.events))
        cpu_us = cpu_only(base_payload, root / "unused-spool")
        prod, bare = [], []
        for k in range(args.reps):
            log(f"item 1: product run {k + 1}/{args.reps} ({args.events} events)")
            prod.append(run_product(root / f"product-{k}", base_payload, args.events, args.batch_size,
                                    k * args.events))
            log(f"        {prod[-1]:,.0f} ev/s; item 2: bare run {k + 1}/{args.reps}")
            bare.append(run_bare(root / f"bare-{k}", datas, args.events, args.batch_size))
            log(f"        {bare[-1]:,.0f} ev/s")
        pm, bm = statistics.median(prod), statistics.median(bare)
        report["batch"] = {
            "product_eps": prod,
            "bare_eps": bare,
            "product_eps_median": pm,
            "bare_eps_median": bm,
            "ratio": pm / bm,
            "cpu_us_per_event": cpu_us,
            "event_bytes_mean": statistics.fmean(len(d) for d in datas),
            "target_eps_met": pm >= TARGET_EPS,
            "target_ratio_met": pm / bm >= TARGET_RATIO,
        }

        log(f"item 3: {args.calls} single emits")
        report["latency"] = run_latency(root / "latency", base_payload, args.calls, 100)
        report["latency"]["target_met"] = report["latency"]["p99_ms"] <= TARGET_P99_MS

        log(f"item 4: {args.runs} interleaved process runs per command")
        proc = run_process(root / "process", base_payload, args.runs)
        proc["device_ok"] = os.stat(root / "process" / "spool").st_dev == os.stat(root / "product-0").st_dev
        report["process"] = proc
        report["elapsed_s"] = time.perf_counter() - t_start
        # The figures first: cleaning up ~6 x N files takes a while on this disk.
        print(render(report), file=sys.stderr if args.json else sys.stdout, flush=True)
        done = True
    finally:
        log(f"cleaning up {root}" + ("" if done else " after an error"))
        t_clean = time.perf_counter()
        remove_tree(root)
        # Write back the freed inode tables so ext4 without a journal skips the
        # freed inodes for ~60 s rather than ~300 s (other work here creates files too).
        os.sync()
        report["cleanup_s"] = time.perf_counter() - t_clean
        log(f"cleanup took {report['cleanup_s']:.1f} s; total {time.perf_counter() - t_start:.1f} s")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
