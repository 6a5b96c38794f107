"""Completion offload: a helper process files finished events into ``processed/``.

Why: draining a backlog costs the daemon two directory operations per event
(the claim and the completion), and a cross-directory ``rename`` holds a
filesystem-wide lock, so the two never overlap. The mover takes the second
one off the daemon's critical path: the daemon writes ``D <name>`` down a
pipe (one small ``write``, which survives a crash of the daemon like a
journal line would) and a child process (:mod:`._mover_child`, standard
library only) files the event with ``link`` + ``unlink``, which run on the
other core beside the daemon's next claims.

Contract:

* :meth:`Mover.complete` hands one in-flight event (by file name) over; once
  it returns the event *will* reach ``processed/``: by the child, or, if the
  child died, by :meth:`Mover.close`/:meth:`Mover.poll` filing every
  unacknowledged name in this process.
* Acknowledgements come per :meth:`Mover.sync` (the child fsyncs
  ``processed/`` and answers); :meth:`Mover.settled` is True once every name
  handed over is acknowledged.
* If the daemon dies, the child still files everything it was sent and exits
  at end of input. Recovery must not take the dead owner's in-flight
  directory while the child runs: the daemon's owner lock
  (``run/owners/<owner>.lock``) is inherited by the child, and recovery waits
  for it (see :mod:`poetctl.daemon.core`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import orjson

from ._mover_child import file_one

CHILD = Path(__file__).with_name("_mover_child.py")
F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20


class Mover:
    """One child process filing this daemon's finished events. Thread-safe."""

    def __init__(
        self,
        inflight_dir: Path,
        processed_dir: Path,
        pass_fds: tuple[int, ...] = (),
        index_path: Path | None = None,
    ) -> None:
        self.inflight_dir = inflight_dir
        self.processed_dir = processed_dir
        #: True if rows handed to :meth:`complete` go to the index (the child writes them).
        self.indexes = index_path is not None
        argv = [sys.executable, "-I", "-S", str(CHILD), str(inflight_dir), str(processed_dir)]
        if index_path is not None:
            argv.append(str(index_path))
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=pass_fds,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._w = self.proc.stdin.fileno()
        self._r = self.proc.stdout.fileno()
        try:
            fcntl.fcntl(self._w, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means the daemon waits for the child sooner
        os.set_blocking(self._r, False)
        self._lock = threading.Lock()
        self._unacked: deque[str] = deque()
        self._sent = 0  # names handed over so far
        self._acked = 0  # names acknowledged so far
        self._syncs: dict[int, int] = {}  # sync number -> names sent before it
        self._seq = 0
        self._ackbuf = b""
        self.alive = True

    # -- handing over ----------------------------------------------------------------
    def complete(self, name: str, row: tuple[object, ...] | None = None) -> bool:
        """Hand in-flight ``name`` (and its index ``row``) over; False if the mover is gone.

        On False the caller files the event (and indexes it) itself. A row is
        only passed on when :attr:`indexes` is True; if the child dies, rows it
        had not written are lost to the index (derived data, rebuilt by fsck).
        """
        line = b"D " + name.encode() + b"\n"
        if row is not None and self.indexes:
            line += b"I " + orjson.dumps(row) + b"\n"
        with self._lock:
            if not self.alive:
                return False
            self._unacked.append(name)
            self._sent += 1
            try:
                os.write(self._w, line)
            except OSError as exc:
                self._fail(f"cannot write to the mover: {exc.strerror}")
            return True

    def sync(self) -> None:
        """Ask the child to fsync ``processed/`` and acknowledge everything sent so far."""
        with self._lock:
            if not self.alive or self._sent == self._acked or (self._syncs and max(self._syncs.values()) == self._sent):
                return
            self._seq += 1
            self._syncs[self._seq] = self._sent
            try:
                os.write(self._w, b"S %d\n" % self._seq)
            except OSError as exc:
                self._fail(f"cannot write to the mover: {exc.strerror}")

    def poll(self) -> None:
        """Take in acknowledgements that arrived (never blocks); notice a dead child."""
        with self._lock:
            if self.alive:
                self._read_acks(block=False)

    def settled(self) -> bool:
        """True if every name handed over is filed; otherwise requests an acknowledgement."""
        self.poll()
        if self._acked == self._sent:
            return True
        self.sync()
        return False

    def backlog(self) -> int:
        """Names handed over and not yet acknowledged."""
        return self._sent - self._acked

    # -- ending --------------------------------------------------------------------------
    def close(self) -> None:
        """End of input; wait for the child; file whatever it did not acknowledge."""
        with self._lock:
            if not self.alive:
                return
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            os.set_blocking(self._r, True)
            while self._read_acks(block=True):
                pass
            rc = self.proc.wait()
            self.alive = False
            if rc == 0:
                # End of input reached and carried out: everything sent is filed.
                self._acked = self._sent
                self._unacked.clear()
            else:
                sys.stderr.write(f"poetctl: warning: completion mover exited with {rc}; filing its queue here\n")
                self._file_here()
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def _read_acks(self, block: bool) -> bool:
        """Read what the child answered; False at end of output (the child is gone)."""
        try:
            data = os.read(self._r, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            if not block:
                self._fail("the completion mover stopped")
            return False
        lines = (self._ackbuf + data).split(b"\n")
        self._ackbuf = lines.pop()
        for line in lines:
            sent = self._syncs.pop(int(line), None)
            if sent is not None:
                while self._acked < sent:
                    self._unacked.popleft()
                    self._acked += 1
        return True

    def _fail(self, why: str) -> None:
        """The child is gone or unusable: stop it for sure, then file its queue here."""
        self.alive = False
        sys.stderr.write(f"poetctl: warning: {why}; filing completed events in the daemon\n")
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self._file_here()

    def _file_here(self) -> None:
        src = os.open(self.inflight_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        dst = os.open(self.processed_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while self._unacked:
                file_one(self._unacked.popleft().encode(), src, dst)
                self._acked += 1
            os.fsync(dst)
        finally:
            os.close(src)
            os.close(dst)


__all__ = ["Mover"]
