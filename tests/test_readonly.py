"""Read commands never write to the spool: the index is opened read-only (no WAL switch, no -wal/-shm
files), on the committed example, on an idle WAL-mode spool, on a spool the reader cannot write, and
while a daemon writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv, load_samples
from daemon_helpers.harness import NOOP, Daemons, wait_for, write_config
from privileges import can_drop, make_readonly, make_writable, run_bound

from poetctl import EventRouter

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "spool_example"
SAMPLES = load_samples()

# Every command that only reads, with options that make it print (exit 0 or 1, never a write).
READERS = [
    ("tail",),
    ("tail", "-n", "3", "--state", "processed", "-o", "table"),
    ("tail", "--type", "drift.*", "-o", "cloudevents"),
    ("tail", "-f", "-n", "2", "--idle-timeout", "0.2"),
    ("correlate", "drift-alert-123"),
    ("correlate", "drift-alert-123", "-o", "json", "--expect", "drift.detected>alert.*"),
    ("status",),
    ("status", "--check", "-o", "json"),
    ("fsck",),
    ("replay", "--dry-run", "--all"),
    ("prune", "--dry-run", "--days", "0"),
    ("dead", "list"),
    ("dead", "purge", "--all", "--dry-run"),
    ("state", "show", "detect_drift"),
    ("state", "list"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every name under ``root`` (directories included) with its mtime, size and mode; links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size, st.st_mode)
    st = root.lstat()
    out["."] = (st.st_mtime_ns, st.st_size, st.st_mode)
    return out


def changes(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> list[str]:
    return [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def run(cwd: Path, spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv("--spool", spool, *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of spool_example (mtimes kept): its index is in rollback-journal mode, as committed."""
    dest = tmp_path_factory.mktemp("ro") / "example"
    shutil.copytree(EXAMPLE, dest)
    return dest


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_read_commands_leave_the_example_spool_untouched(example: Path, args: tuple[str, ...]) -> None:
    """No file or directory of a copy of spool_example changes (names, mtimes, sizes, modes)."""
    before = snapshot(example)
    r = run(example.parent, example, *args)
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr and "index unusable" not in r.stderr
    assert changes(before, snapshot(example)) == []


@pytest.fixture(scope="module")
def wal_spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool whose index a daemon wrote in WAL mode and closed (no -wal/-shm files left), with a chain."""
    cwd = tmp_path_factory.mktemp("wal")
    spool = cwd / "spool"
    router = EventRouter(spool=spool)
    router.emit("drift.detected", SAMPLES["drift.detected"]["valid"][0], correlation_id="drift-alert-123")
    r = subprocess.run(
        cli_argv("--spool", spool, "daemon", "--once"), env=clean_env(), cwd=cwd, capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr  # the built-in handler adds the alert: a chain to correlate
    index = spool / "index" / "events.sqlite"
    assert index.read_bytes()[18] == 2, "the daemon left the index in WAL mode"
    assert sorted(p.name for p in index.parent.iterdir()) == ["events.sqlite"]
    return spool


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_read_commands_create_no_wal_files_on_an_idle_wal_index(wal_spool: Path, args: tuple[str, ...]) -> None:
    """On a WAL-mode index nobody has open, readers create no -wal/-shm files and change nothing."""
    before = snapshot(wal_spool)
    r = run(wal_spool.parent, wal_spool, *args)
    assert r.returncode in (0, 1, 66), r.stderr  # 66: no function state in this spool
    assert "Traceback" not in r.stderr and "index unusable" not in r.stderr
    assert changes(before, snapshot(wal_spool)) == []


def test_status_reads_the_idle_wal_index(wal_spool: Path) -> None:
    """The read-only connection really reads the index: status takes its processed count from it."""
    r = run(wal_spool.parent, wal_spool, "status", "-o", "json")
    doc = json.loads(r.stdout)
    assert doc["counts_source"]["processed"] == "index" and doc["counts"]["processed"] >= 2


needs_modes = pytest.mark.skipif(not can_drop(), reason="cannot make file modes bind for a child process here")


@needs_modes
@pytest.mark.parametrize("which", ["example", "wal"])
def test_readers_work_on_a_spool_they_cannot_write(tmp_path: Path, example: Path, wal_spool: Path, which: str) -> None:
    """A spool the reader cannot write (modes bind): readers still read the index, and change nothing."""
    spool = tmp_path / "spool"
    shutil.copytree(example if which == "example" else wal_spool, spool)
    make_readonly(spool)
    try:
        before = snapshot(spool)
        r = run_bound(tmp_path, "--spool", spool, "status", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["counts_source"]["processed"] == "index" and "unusable" not in r.stderr
        for args in READERS:
            r = run_bound(tmp_path, "--spool", spool, *args)
            assert r.returncode in (0, 1, 66), (args, r.stderr)
            assert "Traceback" not in r.stderr and "index unusable" not in r.stderr, (args, r.stderr)
        assert changes(before, snapshot(spool)) == []
    finally:
        make_writable(spool)


def test_readers_see_what_a_live_daemon_writes(tmp_path: Path) -> None:
    """While a daemon writes the index (mode=ro through its WAL), readers work and see every committed row."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    n = 600
    daemons = Daemons(tmp_path)
    try:
        d = daemons.start(spool, write_config(tmp_path), handlers=[NOOP])
        stop = threading.Event()
        errors: list[str] = []

        def read_loop() -> None:
            while not stop.is_set():
                for args in (("status", "-o", "json"), ("tail", "-n", "5", "--state", "processed")):
                    r = run(tmp_path, spool, *args)
                    if r.returncode not in (0, 1) or "Traceback" in r.stderr or "unusable" in r.stderr:
                        errors.append(f"{args}: {r.returncode} {r.stderr}")

        reader = threading.Thread(target=read_loop)
        reader.start()
        try:
            for _ in range(n // 50):
                router.emit_many([("system.metrics", SAMPLES["system.metrics"]["valid"][0])] * 50)
            wait_for(lambda: len(os.listdir(spool / "events" / "processed")) >= n, "the daemon to process", procs=[d])
        finally:
            stop.set()
            reader.join()
        assert errors == []
        assert (spool / "index" / "events.sqlite-wal").exists(), "the daemon holds the index open (WAL live)"

        def indexed() -> bool:
            doc = json.loads(run(tmp_path, spool, "status", "-o", "json").stdout)
            return bool(doc["counts_source"]["processed"] == "index" and doc["counts"]["processed"] >= n)

        wait_for(indexed, "status to count every processed event from the index", procs=[d])
        assert d.stop() == 0
    finally:
        daemons.cleanup()


def test_tail_on_the_committed_example_keeps_git_clean() -> None:
    """`tail` (and correlate, status) on the real spool_example leave `git status --porcelain` empty."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")

    def dirty() -> str:
        return subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "spool_example"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    if dirty():
        pytest.skip("spool_example already has local changes")
    try:
        for args in (("tail",), ("correlate", "drift-alert-123"), ("status",), ("fsck",)):
            r = run(REPO, EXAMPLE, *args)
            assert r.returncode == 0, r.stderr
            assert dirty() == "", args
    finally:
        if dirty():  # put the committed example back for everyone else
            subprocess.run(["git", "checkout", "--", "spool_example"], cwd=REPO, check=False)
            for extra in ("events.sqlite-wal", "events.sqlite-shm"):
                (EXAMPLE / "index" / extra).unlink(missing_ok=True)
