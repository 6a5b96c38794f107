"""The completion mover: a child process that files handled events into processed/.

Unit level, on a real child process: it files what it is sent, finishes its
queue after its parent is gone, and a parent whose child died files the rest
itself. Daemon level: recovery waits while a dead owner's mover still holds
the owner lock, drops in-flight names that were already filed, and the
daemon behaviours (crashes included) hold with the mover always on
(``mover_backlog = 0``), threaded and inline.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_daemon as td
import test_daemon_crash as tc
from daemon_helpers import harness

from poetctl import EventRouter
from poetctl.backends.fs.index import Index
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.fs.mover import CHILD, Mover
from poetctl.daemon.core import Daemon, DaemonOptions


def _make_inflight(tmp_path: Path, n: int) -> tuple[Path, Path, list[str]]:
    inflight, processed = tmp_path / "inflight", tmp_path / "processed"
    inflight.mkdir()
    processed.mkdir()
    names = [f"ev-{i:05d}.json" for i in range(n)]
    for name in names:
        (inflight / name).write_bytes(name.encode())
    return inflight, processed, names


def test_mover_files_every_name_it_is_sent(tmp_path: Path) -> None:
    inflight, processed, names = _make_inflight(tmp_path, 500)
    m = Mover(inflight, processed)
    for name in names:
        assert m.complete(name)
    m.sync()
    m.close()
    assert sorted(os.listdir(processed)) == names
    assert os.listdir(inflight) == []
    assert m.backlog() == 0
    assert all((processed / n).read_bytes() == n.encode() for n in names)


def test_mover_settles_once_the_child_acknowledged(tmp_path: Path) -> None:
    """settled() turns true once the child has acknowledged every name, and by then all are filed."""
    inflight, processed, names = _make_inflight(tmp_path, 50)
    m = Mover(inflight, processed)
    try:
        for name in names:
            m.complete(name)
        # Polled, not counted in yields: the child may still be starting on a slow machine.
        harness.wait_for(m.settled, "the mover to acknowledge all 50 names", interval=0.001)
        assert sorted(os.listdir(processed)) == names
    finally:
        m.close()


def test_child_finishes_its_queue_when_the_parent_dies(tmp_path: Path) -> None:
    """The parent is SIGKILLed right after handing names over: the child still files them all."""
    inflight, processed, names = _make_inflight(tmp_path, 2000)
    script = (
        "import sys, os, signal\n"
        "from pathlib import Path\n"
        "from poetctl.backends.fs.mover import Mover\n"
        f"m = Mover(Path({str(inflight)!r}), Path({str(processed)!r}))\n"
        "sys.stdout.write(str(m.proc.pid) + '\\n'); sys.stdout.flush()\n"
        f"for n in {names!r}: m.complete(n)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL
    child = int(p.stdout.split()[0])
    harness.wait_for(lambda: not _pid_alive(child), "the orphaned mover to exit")
    assert sorted(os.listdir(processed)) == names
    assert os.listdir(inflight) == []


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ")[1][:1] != b"Z"
    except FileNotFoundError:
        return False


def test_parent_files_the_queue_itself_when_the_child_dies(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inflight, processed, names = _make_inflight(tmp_path, 300)
    m = Mover(inflight, processed)
    for name in names[:100]:
        m.complete(name)
    m.proc.kill()
    m.proc.wait()
    for name in names[100:]:
        filed = m.complete(name)
        if not filed:  # the mover noticed: the caller files it, as the daemon does
            os.rename(inflight / name, processed / name)
    m.close()
    assert sorted(os.listdir(processed)) == names
    assert os.listdir(inflight) == []
    assert "filing" in capfd.readouterr().err


def test_claims_are_answered_in_order_and_made_here_once_the_child_is_gone(tmp_path: Path) -> None:
    pending, processed, names = _make_inflight(tmp_path, 300)  # files start in "pending" here
    inflight = tmp_path / "claimed"
    inflight.mkdir()
    m = Mover(inflight, processed, pending_dir=pending)
    first = m.claim([*names[:100], "ev-missing.json"])
    assert m.claim_result(first) == b"1" * 100 + b"0"
    m.proc.kill()
    m.proc.wait()
    second = m.claim(names[100:200])
    third = m.claim(names[200:])
    assert m.claim_result(second) == b"1" * 100
    assert m.claim_result(third) == b"1" * 100
    assert not m.alive
    m.close()
    assert sorted(os.listdir(inflight)) == names
    assert os.listdir(pending) == []


def test_child_refuses_names_that_are_not_event_files(tmp_path: Path) -> None:
    inflight, processed, _ = _make_inflight(tmp_path, 1)
    (tmp_path / "secret.json").write_text("x")
    p = subprocess.run(
        [sys.executable, "-I", "-S", str(CHILD), str(inflight), str(processed)],
        input=b"D ../secret.json\n",
        capture_output=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert b"refusing name" in p.stderr
    assert os.listdir(processed) == []
    assert (tmp_path / "secret.json").exists()


def test_child_keeps_the_processed_copy_when_it_is_the_same_file(tmp_path: Path) -> None:
    """A crash between link and unlink left the event in both places: only the in-flight name goes."""
    inflight, processed, names = _make_inflight(tmp_path, 1)
    os.link(inflight / names[0], processed / names[0])
    p = subprocess.run(
        [sys.executable, "-I", "-S", str(CHILD), str(inflight), str(processed)],
        input=f"D {names[0]}\nS 7\n".encode(),
        capture_output=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"S 7\n"
    assert os.listdir(inflight) == []
    assert (processed / names[0]).read_bytes() == names[0].encode()


# -- recovery and the owner lock -------------------------------------------------------------
DEAD_OWNER = "deadhost.4194999.1"


def _dead_owner_with(sp: Path, ids: list[str]) -> Path:
    layout = SpoolLayout(sp)
    d = layout.inflight / DEAD_OWNER
    d.mkdir()
    for i in ids:
        os.rename(layout.pending / f"{i}.json", d / f"{i}.json")
    return d


def test_recovery_waits_for_a_dead_owners_mover_then_drops_filed_copies(sp: Path) -> None:
    router = EventRouter(spool=sp)
    ids = router.emit_many([("system.metrics", {"service": "t", "metrics": {"n": n}}) for n in range(4)])
    layout = SpoolLayout(sp)
    d = _dead_owner_with(sp, ids)
    os.link(d / f"{ids[0]}.json", layout.processed / f"{ids[0]}.json")  # filed, not yet unlinked
    (layout.run / "owners").mkdir(exist_ok=True)
    lock_path = layout.run / "owners" / f"{DEAD_OWNER}.lock"
    # A process standing in for the dead daemon's mover holds the inherited lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT, 0o640)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        daemon = Daemon(router, DaemonOptions(once=True, watch=False, lease_seconds=0.0))
        assert daemon.consumer.recovery.run(all_dead=False) == 0
        assert daemon.consumer.recovery.busy
        assert len(os.listdir(d)) == 4, "nothing may be taken while the dead owner's mover runs"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert daemon.consumer.recovery.run(all_dead=False) == 3
    assert not d.exists()
    assert not lock_path.exists()
    assert sorted(p[:-5] for p in os.listdir(layout.pending)) == sorted(ids[1:])
    assert os.listdir(layout.processed) == [f"{ids[0]}.json"]


def test_daemon_releases_its_owner_lock_and_leaves_nothing_in_flight(sp: Path) -> None:
    router = EventRouter(spool=sp)
    router.emit_many([("system.metrics", {"service": "t", "metrics": {"n": n}}) for n in range(3000)])
    router.subscribe("*", lambda e: None, name="noop")
    daemon = Daemon(router, DaemonOptions(once=True, watch=False, workers=1, mover_backlog=1000))
    assert daemon.run() == 0
    assert daemon.consumer.mover is not None and not daemon.consumer.mover.alive
    layout = SpoolLayout(sp)
    assert len(os.listdir(layout.processed)) == 3000
    assert os.listdir(layout.pending) == []
    assert os.listdir(layout.inflight) == []
    assert os.listdir(layout.run / "owners") == []
    # The index has every filed event (the daemon writes the rows; the mover files the files).
    idx = Index.open_existing(layout)
    assert idx is not None
    try:
        assert idx.counts() == {"processed": 3000}
    finally:
        idx.close()


# -- daemon behaviours with the mover always on -------------------------------------------------
CASES: list[Callable[..., None]] = [
    td.test_once_drains_everything_and_status_counts_it,
    td.test_event_without_subscriber_goes_straight_to_processed,
    td.test_per_key_order_holds_through_retries,
    td.test_handler_follow_up_is_linked_deterministic_and_deduplicated_on_replay,
    tc.test_sigkill_at_random_moments_loses_nothing_and_bounds_duplicates,
    tc.test_sigkilled_daemons_inflight_events_are_recovered_by_the_next_one,
    tc.test_handlers_finished_before_a_crash_are_not_rerun,
    tc.test_sigterm_finishes_current_work_and_hands_back_the_rest,
    tc.test_second_sigterm_exits_at_once_with_130_and_nothing_is_lost,
]


@pytest.fixture(params=[4, 1], ids=["threaded", "inline"])
def _mover_always(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    original = harness.write_config
    workers = request.param

    def write_config(directory: Path, name: str = "poet.toml", **daemon: Any) -> Path:
        daemon["mover_backlog"] = 0
        daemon["workers"] = workers
        return original(directory, name, **daemon)

    for module in (td, tc):
        monkeypatch.setattr(module, "write_config", write_config)


@pytest.fixture
def cfg(tmp_path: Path, _mover_always: None) -> Path:
    """The shared test config, with the mover always on."""
    return td.write_config(tmp_path)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("test_") for c in CASES])
def test_with_the_mover_always_on(
    case: Callable[..., None], _mover_always: None, request: pytest.FixtureRequest
) -> None:
    """The same behaviour holds when every completion goes through the mover."""
    kwargs = {name: request.getfixturevalue(name) for name in inspect.signature(case).parameters}
    case(**kwargs)
