"""The names that arrive in one spool directory, from the kernel (Linux inotify, read synchronously).

Why the hybrid forwarder needs it: a listing of the event directories is not a
snapshot. Events move while it runs, and a file moved *backwards* in the flow
(``inflight/<owner>/`` -> ``pending/``: a daemon handing work back, recovery of
a dead daemon, ``dead retry``) after ``pending/`` was listed and before its old
directory was is in no listing at all; so is a file committed into
``pending/`` during its listing (readdir only promises the entries present
throughout). Every such event *arrived in* ``pending/`` during the listing, and
inotify reports each arrival (``IN_CREATE``, ``IN_MOVED_TO``) by name, in the
order it happened, with nothing lost short of an overflow, which is reported
too. A listing plus the arrivals seen between its start and its end therefore
names every event committed before its end (see :func:`~.outbox.committed`).

The watch is on an already opened, no-follow directory descriptor (through
``/proc/self/fd``), so a symlink swapped in for the directory is never watched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from typing import Any

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


class Arrivals:
    """Names created in or moved into one directory since the last :meth:`take`.

    ``complete`` is False after anything that may have lost a name (a queue
    overflow, the directory removed or moved): the caller must not rely on the
    names seen since then, and calls :meth:`reset` after starting over.
    Raises OSError if inotify is unavailable (non-Linux, the watch limit).
    """

    def __init__(self, dir_fd: int) -> None:
        libc = _lib()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        path = f"/proc/self/fd/{dir_fd}".encode()
        wd = libc.inotify_add_watch(fd, path, IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            self.fd = -1
            raise OSError(err, os.strerror(err))
        self.complete = True
        self._names: list[str] = []

    def poll(self) -> None:
        """Read what the kernel queued so far (never blocks); call often to keep its queue from overflowing."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            pos = 0
            while pos + _HEADER.size <= len(data):
                _wd, mask, _cookie, size = _HEADER.unpack_from(data, pos)
                pos += _HEADER.size
                if mask & _LOST:
                    self.complete = False
                elif size:
                    self._names.append(data[pos : pos + size].rstrip(b"\0").decode("utf-8", "surrogateescape"))
                pos += size

    def take(self) -> list[str]:
        """The names that arrived since the last call, oldest first."""
        self.poll()
        names, self._names = self._names, []
        return names

    def reset(self) -> None:
        """Forget what was seen and trust the watch again (after the caller relisted everything)."""
        self.take()
        self.complete = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
