"""Small shared state files in ``run/`` (the key ledger, the backpressure gauge): opening and locking.

A ``flock`` excludes other processes only: threads of one process share the
open file, so :func:`locked` also takes a per-object thread lock. Opening goes
through the real ``run/`` directory and never follows a link.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .layout import FILE_MODE

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _thread

try:
    # hashlib.blake2b itself (the slots of the run files are keyed by it), without ``import hashlib``,
    # which loads OpenSSL: ~11M instructions of a one-event emit's start-up.
    from _blake2 import blake2b as blake2b
except ImportError:  # a build without it: hashlib's
    from hashlib import blake2b as blake2b


def open_run_file(path: Path) -> tuple[int, bool]:
    """Open ``path`` (in ``run/``, made if missing) read-write without following links; ``(fd, created)``."""
    run = path.parent
    try:
        os.mkdir(run, 0o750)
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(run).st_mode):
        raise OSError(f"{run} is not a directory")  # a link: never write through it
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE), True
    except FileExistsError:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC), False


@contextmanager
def locked(mutex: _thread.RLock, fd: int) -> Iterator[None]:
    """Exclusive use of the file ``fd`` against this process's other threads and other processes."""
    with mutex:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
