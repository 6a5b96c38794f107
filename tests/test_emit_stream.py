"""emit_many on the spool writes tmp files while it builds, and still publishes all or nothing."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI_TIMEOUT, clean_env, files_in
from test_crash import _non_empty, _until, check_spool_after_crash

from poetctl import EventRouter
from poetctl.backends.fs import writer
from poetctl.backends.fs.stream import CHUNK_FILES
from poetctl.errors import InvalidData, SpoolIOError
from poetctl.event import verify_checksum

N = CHUNK_FILES * 2 + 100  # two full bursts written before the last items are built


def _metrics(x: int) -> dict[str, Any]:
    return {"service": "bench", "metrics": {"x": x}}


class Spy(Mapping[str, Any]):
    """A payload that records, when the builder copies it, how many tmp files exist and what is pending."""

    def __init__(self, router: EventRouter, x: int) -> None:
        self.router, self.data, self.seen = router, _metrics(x), (-1, -1)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        lay = self.router.layout
        self.seen = (len(files_in(lay.tmp)), len(files_in(lay.pending)))
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_files_are_written_while_later_items_are_built(router: EventRouter) -> None:
    """Item N-1 is built after the first bursts' tmp files exist, yet nothing is pending until all are built."""
    spy = Spy(router, N - 1)
    items: list[Any] = [("system.metrics", _metrics(x)) for x in range(N - 1)] + [("system.metrics", spy)]
    ids = router.emit_many(items)
    tmp_files, pending_files = spy.seen
    assert tmp_files >= 2 * CHUNK_FILES  # the first bursts were written before the last item was built
    assert pending_files == 0  # ...and none of them was visible
    names = {p.name for p in files_in(router.layout.pending)}
    assert names == {f"{i}.json" for i in ids} and len(ids) == N
    assert files_in(router.layout.tmp) == []
    for p in files_in(router.layout.pending):
        verify_checksum(json.loads(p.read_bytes()), where=str(p))


@pytest.mark.parametrize("bad", ["invalid-payload", "duplicate-id", "too-large"])
def test_a_bad_item_after_written_bursts_leaves_nothing(router: EventRouter, bad: str) -> None:
    """A bad item after two written bursts: InvalidData naming it, nothing pending, the tmp files removed."""
    spy = Spy(router, N - 2)
    items: list[Any] = [("system.metrics", _metrics(x)) for x in range(N - 2)] + [("system.metrics", spy)]
    if bad == "invalid-payload":
        items.append(("system.metrics", {"service": "bench"}))  # no metrics
        want = f"item {N}"
    elif bad == "duplicate-id":
        items[3] = {"id": "same-id", "type": "system.metrics", "payload": _metrics(3)}
        items.append({"id": "same-id", "type": "system.metrics", "payload": _metrics(4)})
        want = "same-id"
    else:
        router.config.max_event_bytes = 2000
        items.append(("system.metrics", {"service": "bench", "metrics": {f"k{i}": i for i in range(200)}}))
        want = "max_event_bytes"
    with pytest.raises(InvalidData, match=want):
        router.emit_many(items)
    assert spy.seen[0] >= 2 * CHUNK_FILES  # files had been written: the error removed them
    assert files_in(router.layout.pending) == []
    assert files_in(router.layout.tmp) == []


def test_an_invalid_item_is_reported_before_an_earlier_too_large_one(router: EventRouter) -> None:
    """Errors keep their order: every item is built (and checked) before the size limit is applied."""
    router.config.max_event_bytes = 2000
    items: list[Any] = [("system.metrics", _metrics(x)) for x in range(N)]
    items[CHUNK_FILES + 5] = ("system.metrics", {"service": "bench", "metrics": {f"k{i}": i for i in range(200)}})
    items.append(("system.metrics", {"service": "bench"}))
    with pytest.raises(InvalidData, match=f"item {N + 1}"):
        router.emit_many(items)
    assert files_in(router.layout.pending) == [] and files_in(router.layout.tmp) == []


def test_a_failed_background_sync_fails_the_group(router: EventRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """syncfs failing (EIO) in the sync thread: SpoolIOError, nothing pending, no tmp file left."""
    calls = []

    def failing_syncfs(fd: int) -> int:
        calls.append(fd)
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(writer, "_syncfs", failing_syncfs)
    with pytest.raises(SpoolIOError, match="syncfs"):
        router.emit_many([("system.metrics", _metrics(x)) for x in range(N)])
    assert calls
    assert files_in(router.layout.pending) == []
    assert files_in(router.layout.tmp) == []
    monkeypatch.undo()
    assert len(router.emit_many([("system.metrics", _metrics(x)) for x in range(N)])) == N  # the stream recovers


CHILD = """
import sys
from poetctl import EventRouter
router = EventRouter(spool=sys.argv[1])
x = 0
for g in range(int(sys.argv[2])):
    ids = router.emit_many([("system.metrics", {"service": "bench", "metrics": {"x": x + i}}) for i in range(1000)])
    x += 1000
    sys.stdout.write("".join(i + "\\n" for i in ids))
    sys.stdout.flush()
"""


def test_sigkill_during_a_streamed_emit_many(tmp_path: Path) -> None:
    """SIGKILL while a group's tmp files are written (after a group's ids were printed): whole events only."""
    sp, groups = tmp_path / "spool", 20
    out_path = tmp_path / "stdout"
    tmp = sp / "events" / "tmp"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(sp), str(groups)],
            stdout=out,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            cwd=tmp_path,
        )
        try:
            _until(lambda: out_path.stat().st_size > 0 and tmp.is_dir() and _non_empty(tmp), proc)
            assert proc.poll() is None, "the child finished before it could be killed mid-group"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=CLI_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_events, n_printed, _ = check_spool_after_crash(sp, out_path)
    assert 0 < n_printed <= n_events < groups * 1000
