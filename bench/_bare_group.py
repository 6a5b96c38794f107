"""The bare ceiling for bench/latency.py: durable single emits from threads, no poetctl.

Each call does the durable work of one single emit with the product's
group-commit pattern and nothing else: create a tmp file (O_EXCL) holding
``data``, fsync it, close it; join a queue; the caller at the head of the
queue (the leader) renames every queued caller's file into ``dest``, fsyncs
``dest`` once and wakes them; a caller returns once its file is published.
No envelope, validation, id, checksum or index: what is left is the disk and
the threads' hand-offs, i.e. the best an emit of this shape can do here.
"""

from __future__ import annotations

import ctypes
import os
import threading

_libc = ctypes.CDLL(None, use_errno=True)

O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Waiter:
    __slots__ = ("done", "name", "wake")

    def __init__(self, name: str) -> None:
        self.name = name
        self.done = False
        self.wake: threading.Event | None = None


class BareGroupCommit:
    """Leader/follower group commit of tmp files into ``dest`` (both directories on one filesystem)."""

    def __init__(self, tmp: str, dest: str, *, leader_syncfs: bool = False) -> None:
        # leader_syncfs: callers do not fsync their own file; the leader makes the whole group's
        # files durable with one syncfs before renaming them (one flush per group, not per file).
        self.leader_syncfs = leader_syncfs
        self.tfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._mutex = threading.Lock()
        self._queue: list[_Waiter] = []
        self._n = 0
        self._prefix = f".{os.getpid()}.{os.urandom(4).hex()}."

    def close(self) -> None:
        os.close(self.tfd)
        os.close(self.dfd)

    def commit(self, data: bytes) -> str:
        """Durably publish ``data`` as a new file in ``dest``; return its name."""
        with self._mutex:
            self._n += 1
            name = f"{self._prefix}{self._n}"
        fd = os.open(name, O_CREATE, 0o640, dir_fd=self.tfd)
        try:
            os.write(fd, data)
            if not self.leader_syncfs:
                os.fsync(fd)
        finally:
            os.close(fd)
        w = _Waiter(name)
        with self._mutex:
            if self._queue:
                w.wake = threading.Event()
            self._queue.append(w)
        while not w.done:
            with self._mutex:
                head = self._queue[0] is w
            if head:
                self._lead()
            else:
                assert w.wake is not None
                w.wake.wait()
        return name

    def _lead(self) -> None:
        with self._mutex:
            group = list(self._queue)
        if self.leader_syncfs and _libc.syncfs(self.tfd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
        for g in group:
            os.rename(g.name, g.name[1:] + ".json", src_dir_fd=self.tfd, dst_dir_fd=self.dfd)
        os.fsync(self.dfd)
        with self._mutex:
            del self._queue[: len(group)]
            head = self._queue[0] if self._queue else None
        for g in group:
            g.done = True
            if g.wake is not None:
                g.wake.set()
        if head is not None and head.wake is not None:
            head.wake.set()
