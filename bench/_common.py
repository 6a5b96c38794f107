"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

The scripts run as ``python bench/X.py``, which puts bench/ first on
``sys.path``, so they import this module as ``from _common import ...``.
Nothing here imports poetctl: call ``ensure_poetctl_importable()`` first.
"""

# The benches measure raw syscalls, so os.* calls on str paths are deliberate.

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


# -- set-up and output -----------------------------------------------------------------
def ensure_poetctl_importable() -> None:
    """Put the repo on sys.path when this interpreter lacks the editable install."""
    try:
        import poetctl  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO))


def make_log(tag: str, *, tolerant: bool = False) -> Callable[[str], None]:
    """A progress logger printing ``[tag] msg`` to stderr (``tolerant``: ignore OSError)."""

    def log(msg: str) -> None:
        try:
            print(f"[{tag}] {msg}", file=sys.stderr, flush=True)
        except OSError:  # stderr closed or a broken pipe: progress lines are optional
            if not tolerant:
                raise

    return log


def mark(ok: bool) -> str:
    """``ok`` or ``MISSED`` for a target check."""
    return "ok" if ok else "MISSED"


def print_report(text: str, report: Mapping[str, Any], as_json: bool) -> None:
    """Print the text; with ``as_json`` the text goes to stderr and sorted JSON to stdout."""
    if as_json:
        print(text, file=sys.stderr)
        print(json.dumps(report, sort_keys=True))
    else:
        print(text)


# -- machine context -----------------------------------------------------------------
def nproc() -> int | None:
    """CPUs this process may run on (os.cpu_count() where affinity is unavailable)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, None where unavailable."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def fmt_loadavg(load: Sequence[float] | None) -> str:
    """Load averages as ``0.12 0.34 0.56`` (``?`` when unknown)."""
    return " ".join(f"{x:.2f}" for x in load) if load else "?"


def machine_basics(*, load_key: str = "loadavg", all_cpus: bool = False) -> dict[str, Any]:
    """nproc (os.cpu_count() with ``all_cpus``), python version and load average for a report."""
    return {
        "nproc": os.cpu_count() if all_cpus else nproc(),
        "python": platform.python_version(),
        load_key: loadavg(),
    }


def fmt_machine(m: Mapping[str, Any], *, load_key: str = "loadavg", python: bool = False) -> str:
    """``N cpu, [python X, ]loadavg L`` from a machine_basics() dict."""
    py = f"python {m['python']}, " if python else ""
    return f"{m['nproc']} cpu, {py}loadavg {fmt_loadavg(m[load_key])}"


def _unescape_mount(field: str) -> str:
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(esc, ch)
    return field


def mount_of(path: Path) -> dict[str, Any]:
    """The /proc/mounts entry holding ``path`` (longest mount point; the last one wins)."""
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
        src, mp = _unescape_mount(parts[0]), _unescape_mount(parts[1])
        inside = real == mp or mp == "/" or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= best_len:
            best = {"mount_point": mp, "fstype": parts[2], "source": src, "options": parts[3]}
            best_len = len(mp)
    if best["fstype"] == "ext4":
        # /proc/fs/jbd2 has one entry per journalled device ("vda-8"); none = no journal.
        dev = os.path.basename(best["source"])
        try:
            best["ext4_journal"] = any(j.startswith(dev + "-") for j in os.listdir("/proc/fs/jbd2"))
        except OSError:
            best["ext4_journal"] = None
    return best


def fs_type(path: Path) -> str:
    """fstype of the mount holding ``path`` (``?`` when /proc/mounts is unreadable)."""
    return str(mount_of(path)["fstype"])


def disk_room(path: Path) -> tuple[int, int]:
    """(free inodes, free bytes) available to this user on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_favail, st.f_bavail * st.f_frsize


# -- scratch directory ---------------------------------------------------------------
def pick_base(explicit: str | None) -> Path:
    """Scratch parent on the repo's filesystem (the repo's parent, else the temp dir)."""
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


def make_scratch(prefix: str, base: Path) -> Path:
    """A new scratch directory ``<base>/<prefix>XXXXXXXX`` (removed only by remove_scratch)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def remove_tree(root: Path, workers: int = 16) -> None:
    """rm -rf ``root``, unlinking files from several threads (overlaps synchronous discards)."""
    # With ``discard`` and no journal each freed data block is discarded synchronously
    # (~125 us per 700-byte file vs ~13 us for an empty one); parallel unlinks overlap
    # those waits (about 3x faster here).
    chunks: list[list[str]] = []
    for dirpath, _dirs, files in os.walk(root):
        paths = [os.path.join(dirpath, f) for f in files]
        chunks.extend(paths[i : i + 500] for i in range(0, len(paths), 500))

    def unlink_all(paths: list[str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(unlink_all, chunks))
    shutil.rmtree(root, ignore_errors=True)


def remove_scratch(root: Path, *, sync: bool = True, parallel: bool = False) -> float:
    """Delete ``root`` (threaded unlinks with ``parallel``), then os.sync() if ``sync``; returns seconds."""
    t0 = time.perf_counter()
    if parallel:
        remove_tree(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    if sync:
        # Write back the freed inode tables: ext4 without a journal then skips the freed
        # inodes for ~60 s rather than ~300 s (other work on this disk creates files too).
        os.sync()
    return time.perf_counter() - t0


def create_probe(directory: Path, count: int = 500, flags: int = O_CREATE) -> float:
    """Microseconds per bare O_EXCL create+close in a new ``directory`` (files stay; a noisy-disk indicator)."""
    directory.mkdir()
    t0 = time.perf_counter()
    for i in range(count):
        os.close(os.open(f"{directory}/{i}", flags, 0o640))
    return (time.perf_counter() - t0) / count * 1e6


def count_dir(path: Path) -> int:
    """Entries in ``path`` (0 when it does not exist)."""
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


# -- statistics ------------------------------------------------------------------------
def percentile(sorted_vals: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_vals:
        return math.nan
    k = max(1, math.ceil(p / 100 * len(sorted_vals)))
    return sorted_vals[k - 1]


# -- subprocesses ----------------------------------------------------------------------
def clean_env(*, no_bytecode: bool = False, drop: Iterable[str] = ()) -> dict[str, str]:
    """os.environ without POET_* overrides (and ``drop``); ``no_bytecode`` defaults PYTHONDONTWRITEBYTECODE=1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    for name in drop:
        env.pop(name, None)
    if no_bytecode:
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def poetctl_cmd(*args: str) -> list[str]:
    """``python -m poetctl ARGS`` with this interpreter."""
    return [sys.executable, "-m", "poetctl", *args]


def daemon_cmd(spool: Path, handlers: Path, *extra: str, once: bool = True) -> list[str]:
    """``python -m poetctl --spool S daemon [--once] --no-builtin-handlers --handlers H EXTRA``."""
    return poetctl_cmd(
        "--spool",
        str(spool),
        "daemon",
        *(["--once"] if once else []),
        "--no-builtin-handlers",
        "--handlers",
        str(handlers),
        *extra,
    )


def timed_run(
    cmd: Sequence[str], cwd: Path, env: Mapping[str, str], **kwargs: Any
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Wall seconds and result of ``subprocess.run(cmd, cwd=, env=, check=False, **kwargs)``."""
    t0 = time.perf_counter()
    cp: subprocess.CompletedProcess[bytes] = subprocess.run(cmd, cwd=cwd, env=env, check=False, **kwargs)
    return time.perf_counter() - t0, cp


def time_cmd(cmd: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[float, int, bytes]:
    """(wall seconds, exit code, stderr) of ``cmd`` run with stdin from /dev/null and output captured."""
    dt, cp = timed_run(cmd, cwd, env, stdin=subprocess.DEVNULL, capture_output=True)
    return dt, cp.returncode, cp.stderr


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM ``proc`` if it still runs and wait for it; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def high_emitter(router: Any) -> Callable[[int], str]:
    """``emit(i)`` for :func:`probe_high_events`: one ``high`` event of its own key per try."""
    return lambda i: router.emit(
        "system.metrics", {"service": "bench", "metrics": {"try": i}}, correlation_id=f"high-{i}", priority="high"
    )


def probe_high_events(
    emit: Callable[[int], str],
    handled: Callable[[], Mapping[str, float]],
    daemon: subprocess.Popen[bytes],
    tries: int,
    backlog: Callable[[], int],
) -> tuple[list[float], list[float], list[int]]:
    """Emit ``tries`` events one at a time with ``emit(i)``, each waited for until ``handled()`` has it.

    Returns emit -> handler-start latencies (ms), the emit calls' own durations (ms) and ``backlog()``
    before each try. Raises SystemExit (with the daemon's stderr tail if it died) after 30 s without it.
    """
    lat: list[float] = []
    emit_ms: list[float] = []
    backlogs: list[int] = []
    for i in range(tries):
        backlogs.append(backlog())
        t0 = time.time()
        eid = emit(i)
        t1 = time.time()
        deadline = time.monotonic() + 30
        while eid not in (got := handled()):
            if time.monotonic() > deadline or daemon.poll() is not None:
                dead = daemon.poll() is not None and daemon.stderr is not None
                err = daemon.stderr.read().decode()[-2000:] if dead and daemon.stderr else ""
                raise SystemExit(f"high event {eid} not handled within 30 s (daemon rc {daemon.poll()}) {err}")
            time.sleep(0.001)
        lat.append((got[eid] - t0) * 1000)
        emit_ms.append((t1 - t0) * 1000)
    return lat, emit_ms, backlogs
