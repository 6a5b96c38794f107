"""The daemon's wake-up watcher on pending/ (poetctl/backends/fs/watcher.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from poetctl.backends.fs.watcher import InotifyWake, start_watcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only")

WAIT = 30.0  # generous: a wait ends as soon as the event is seen


def _arrive_by_rename(tmp: Path, pending: Path, name: str) -> None:
    (tmp / name).write_bytes(b"{}")
    os.rename(tmp / name, pending / name)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "pending").mkdir()
    return tmp_path / "tmp", tmp_path / "pending"


def test_rename_into_pending_wakes(dirs: tuple[Path, Path]) -> None:
    """A file renamed into the watched directory sets the wake event."""
    tmp, pending = dirs
    wake = threading.Event()
    w = start_watcher(str(pending), wake)
    try:
        _arrive_by_rename(tmp, pending, "a.json")
        assert wake.wait(WAIT)
    finally:
        w.stop()
        w.join()


def test_create_in_pending_wakes_each_time(dirs: tuple[Path, Path]) -> None:
    """A file created in the watched directory wakes, and so does the next arrival after the wake was taken."""
    tmp, pending = dirs
    wake = threading.Event()
    w = start_watcher(str(pending), wake)
    try:
        (pending / "a.json").write_bytes(b"{}")
        assert wake.wait(WAIT)
        wake.clear()
        _arrive_by_rename(tmp, pending, "b.json")
        assert wake.wait(WAIT)
    finally:
        w.stop()
        w.join()


def test_stop_ends_the_thread_and_closes_its_fds(dirs: tuple[Path, Path]) -> None:
    """stop() ends the watcher thread (twice is harmless) and leaves none of its fds open."""
    _, pending = dirs
    before = set(os.listdir("/proc/self/fd"))
    w = start_watcher(str(pending), threading.Event())
    assert isinstance(w, InotifyWake)
    w.stop()
    w.stop()
    w.join()
    assert not w.is_alive()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_removed_directory_ends_the_watch(dirs: tuple[Path, Path]) -> None:
    """When the watched directory goes away the watcher wakes and ends, so the consumer restarts it and rescans."""
    _, pending = dirs
    wake = threading.Event()
    w = start_watcher(str(pending), wake)
    os.rmdir(pending)
    w.join(WAIT)
    assert not w.is_alive()
    assert wake.is_set()
    w.stop()


def test_link_to_a_directory_is_not_watched(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A symlink in place of pending/ is not followed: no watcher, one warning line, rescans instead."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "pending").symlink_to(tmp_path / "elsewhere")
    assert start_watcher(str(tmp_path / "pending"), threading.Event()) is None
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "file watching unavailable" in err


def test_daemon_watcher_does_not_import_watchdog(dirs: tuple[Path, Path]) -> None:
    """On Linux the daemon's watcher is a bare inotify thread: watchdog and its per-event objects stay unloaded."""
    _, pending = dirs
    code = (
        "import sys, threading\n"
        "from poetctl.backends.fs.watcher import start_watcher\n"
        f"w = start_watcher({str(pending)!r}, threading.Event())\n"
        "assert w is not None\n"
        "w.stop(); w.join()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'watchdog'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
