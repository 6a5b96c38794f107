"""Completion offload: a helper process files finished events into ``processed/``.

Why: draining a backlog costs the daemon two directory operations per event
(the claim and the completion), each about as expensive as the whole
read-and-parse of the event, and the daemon's own work is single-threaded
Python. The mover takes both off the daemon's critical path and puts them on
the other core: a child process (:mod:`._mover_child`, standard library only)

* claims batches of events the daemon has already read and verified
  (:meth:`Mover.claim` / :meth:`Mover.claim_result`: the daemon prepares the
  next batch while the child renames this one into in-flight), and
* files handled events: the daemon writes ``D <name>`` down the pipe (one
  small ``write``, which survives a crash of the daemon like a journal line
  would) and the child files the event with ``link`` + ``unlink`` (which,
  unlike a cross-directory ``rename``, do not take the filesystem-wide rename
  lock). The index rows stay with the daemon: measured, SQLite batches cost
  the daemon less than shipping the rows costs the child.

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
        pending_dir: Path | None = None,
    ) -> None:
        self.inflight_dir = inflight_dir
        self.processed_dir = processed_dir
        self.pending_dir = pending_dir
        argv = [sys.executable, "-I", "-S", str(CHILD), str(inflight_dir), str(processed_dir)]
        if pending_dir is not None:
            argv += ["--pending", str(pending_dir)]
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
        self._claims: dict[int, list[str]] = {}  # claim batches sent, not answered
        self._claimed: dict[int, bytes] = {}  # answers not yet collected
        self.alive = True

    # -- handing over ----------------------------------------------------------------
    def complete(self, name: str) -> bool:
        """Hand in-flight ``name`` over; False if the mover is gone (the caller files it)."""
        line = b"D " + name.encode() + b"\n"
        with self._lock:
            if not self.alive:
                return False
            self._unacked.append(name)
            self._sent += 1
            try:
                if os.write(self._w, line) != len(line):  # under PIPE_BUF: whole or not at all
                    raise OSError(0, "short write")
            except OSError as exc:
                self._fail(f"cannot write to the mover: {exc.strerror}")
            return True

    def claim(self, names: list[str]) -> int:
        """Ask the child to claim ``names`` (pending -> in-flight), in order; returns a token.

        Collect the answer with :meth:`claim_result`. If the mover is gone the
        claims are made here, at once.
        """
        with self._lock:
            self._seq += 1
            token = self._seq
            self._claims[token] = names
            if not self.alive:
                self._claim_here(token)
                return token
            data = b"".join(b"C " + n.encode() + b"\n" for n in names) + b"K %d\n" % token
            try:
                _write_all(self._w, data)
            except OSError as exc:
                self._fail(f"cannot write to the mover: {exc.strerror}")
            return token

    def claim_answered(self, token: int) -> bool:
        """Can :meth:`claim_result` of ``token`` return at once (no waiting for the child)?"""
        with self._lock:
            if token not in self._claimed and self.alive:
                self._read_acks(block=False)
            return token in self._claimed or not self.alive

    def claim_result(self, token: int) -> bytes:
        """``b"1"`` (claimed) or ``b"0"`` (gone) per name of claim batch ``token``; waits for it."""
        with self._lock:
            while token not in self._claimed:
                if not self.alive:
                    self._claim_here(token)
                    break
                os.set_blocking(self._r, True)
                try:
                    self._read_acks(block=False)
                finally:
                    if self.alive:
                        os.set_blocking(self._r, False)
            return self._claimed.pop(token)

    def _claim_here(self, token: int) -> None:
        """Make (or find made) the claims of batch ``token`` in this process."""
        assert self.pending_dir is not None
        out = bytearray()
        for name in self._claims.pop(token, []):
            try:
                os.rename(self.pending_dir / name, self.inflight_dir / name)
                out.append(49)
            except FileNotFoundError:
                # The child may have claimed it before it died.
                out.append(49 if os.path.lexists(self.inflight_dir / name) else 48)
        self._claimed[token] = bytes(out)

    def sync(self) -> None:
        """Ask the child to fsync ``processed/`` and acknowledge everything sent so far."""
        with self._lock:
            if not self.alive or self._sent == self._acked or (self._syncs and max(self._syncs.values()) == self._sent):
                return
            self._seq += 1
            self._syncs[self._seq] = self._sent
            try:
                _write_all(self._w, b"S %d\n" % self._seq)
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
            for token in list(self._claims):
                self._claim_here(token)
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
            kind, _, rest = line.partition(b" ")
            if kind == b"K":
                token, _, bits = rest.partition(b" ")
                t = int(token)
                if self._claims.pop(t, None) is not None:
                    self._claimed[t] = bits
                continue
            sent = self._syncs.pop(int(rest), None)
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
        for token in list(self._claims):
            self._claim_here(token)

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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


__all__ = ["Mover"]
