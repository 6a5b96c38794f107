"""A batch emit killed with SIGKILL leaves only whole, valid events; every printed id is durable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv, files_in

from poetctl import EventRouter
from poetctl.event import verify_checksum
from poetctl.spool import SpoolLayout

BATCH_LINES = 20_000


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 bare system.metrics payloads, one per line; line i has metrics.x == i."""
    path = tmp_path_factory.mktemp("crash") / "batch.jsonl"
    path.write_text("".join(json.dumps({"service": "bench", "metrics": {"x": i}}) + "\n" for i in range(BATCH_LINES)))
    return path


def _non_empty(directory: Path) -> bool:
    with os.scandir(directory) as it:
        return any(True for _ in it)


def run_and_kill(batch: Path, sp: Path, cwd: Path, wait: Callable[[subprocess.Popen, Path], None]) -> tuple[int, Path]:
    """Start `emit --batch` into ``sp``, call ``wait``, SIGKILL it; return (rc, stdout file)."""
    SpoolLayout(sp).init()
    out_path = sp.parent / f"{sp.name}.stdout"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            cli_argv("emit", "--batch", batch, "--type", "system.metrics", "--spool", sp),
            stdout=out,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            cwd=cwd,
        )
        try:
            wait(proc, out_path)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=CLI_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, out_path


def check_spool_after_crash(sp: Path, out_path: Path) -> tuple[int, int, int]:
    """Assert the crash left only whole valid events and every printed id is among them.

    Returns (events in pending, ids printed, leftovers in tmp).
    """
    router = EventRouter(spool=sp)
    layout = router.layout
    events = files_in(layout.pending)
    seen_x: set[int] = set()
    for f in events:
        assert f.name.endswith(".json") and not f.name.startswith("."), f
        obj = json.loads(f.read_bytes())
        verify_checksum(obj, where=str(f))
        ev, _ = router.ingest(obj, where=str(f))
        assert ev.id == f.name[: -len(".json")]
        assert ev.type == "system.metrics"
        x = ev.payload["metrics"]["x"]
        assert 0 <= x < BATCH_LINES and x not in seen_x, f
        seen_x.add(x)

    # Nothing but whole events outside tmp/ (run/ may hold lock files, the key ledger of priority
    # delivery and the backpressure gauge; these emits are all normal priority, so no hints).
    for dirpath, _dirs, names in os.walk(sp):
        d = Path(dirpath)
        for n in names:
            p = d / n
            if d == layout.tmp:
                assert n.startswith(".") and n.endswith(".tmp"), p
            elif d == layout.run:
                assert n.endswith(".lock") or n in ("keyledger", "limits"), p
            else:
                assert d == layout.pending, p

    # Every id the process printed before it died is durable and whole.
    complete = out_path.read_text().split("\n")[:-1]  # a torn last line was never fully printed
    printed = set(complete)
    assert len(printed) == len(complete)
    assert printed <= {f.name[: -len(".json")] for f in events}
    return len(events), len(printed), len(files_in(layout.tmp))


def _until(cond: Callable[[], bool], proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
    while not cond() and proc.poll() is None:
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


# A batch line costs ~385 bytes of writes (event file, id on stdout); 300 is a floor.
WRITES_PER_LINE = 300
KILLS_WANTED = 5


def _written(proc: subprocess.Popen) -> int:
    """Bytes ``proc`` has written so far (``wchar`` of /proc/<pid>/io): its progress in any write path."""
    try:
        with open(f"/proc/{proc.pid}/io") as fh:
            for line in fh:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:  # gone (or being reaped): _until also stops on exit
        pass
    return 0


def test_sigkill_at_random_moment_leaves_only_whole_events(batch_file: Path, tmp_path: Path) -> None:
    """SIGKILL at random points of a 20,000-line batch: visible events parse, verify, validate."""
    # The moment is a random amount of the batch's own progress (bytes it has written), not
    # a time: on any machine it lands anywhere from start-up to ~80% of the work, never after
    # it. Kills that cut the batch short are counted, and there must be KILLS_WANTED of them.
    rng = random.Random(1000)
    outcomes = []
    interrupted = 0
    for it in range(2 * KILLS_WANTED):
        if interrupted >= KILLS_WANTED:
            break
        target = rng.randint(1, BATCH_LINES * WRITES_PER_LINE)
        sp = tmp_path / f"spool-{it}"
        rc, out = run_and_kill(batch_file, sp, tmp_path, lambda p, o, t=target: _until(lambda: _written(p) >= t, p))
        assert rc in (0, -signal.SIGKILL)
        n_events, n_printed, n_tmp = check_spool_after_crash(sp, out)
        outcomes.append((target, rc, n_events, n_printed, n_tmp))
        interrupted += rc == -signal.SIGKILL and n_events < BATCH_LINES
    print(f"(bytes written at the kill, rc, events, ids printed, tmp files): {outcomes}")
    assert interrupted >= KILLS_WANTED, f"only {interrupted} kills cut the batch short: {outcomes}"


@pytest.mark.parametrize("moment", ["first-rename", "first-printed-ids"])
def test_sigkill_during_group_commit(batch_file: Path, tmp_path: Path, moment: str) -> None:
    """SIGKILL during a group commit leaves whole events, and every printed id on disk."""
    sp = tmp_path / "spool"
    pending = sp / "events" / "pending"

    def wait(proc: subprocess.Popen, out: Path) -> None:
        if moment == "first-rename":
            _until(lambda: _non_empty(pending), proc)
        else:
            _until(lambda: out.stat().st_size > 0, proc)

    rc, out = run_and_kill(batch_file, sp, tmp_path, wait)
    n_events, n_printed, _ = check_spool_after_crash(sp, out)
    assert rc in (0, -signal.SIGKILL)
    assert n_events > 0
    if moment == "first-printed-ids":
        assert n_printed > 0
