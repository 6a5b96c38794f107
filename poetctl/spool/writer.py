"""Durable, atomic writes: the only way anything enters the spool.

A commit is: write every file under ``events/tmp`` (O_EXCL|O_NOFOLLOW, 0640),
one group sync, then rename (fresh ids) or link (caller-chosen ids, so an
existing name is never replaced) into the destination, then one fsync of the
destination directory. Readers never look in ``tmp/``, so a crash at any
point leaves either nothing or whole, synced files. A failed fsync raises; it
is never retried and trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import SpoolIOError
from .layout import FILE_MODE, SpoolLayout, fsync_dir

O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()

# Below this many files per-file fsync is cheaper than flushing the filesystem.
SYNCFS_THRESHOLD = 8


def group_sync(dir_for_fs: Path, fds: Sequence[int]) -> None:
    """Make the data of ``fds`` durable with one syscall when that pays off.

    With many files, ``syncfs`` on the spool's filesystem (one call) replaces
    one fsync per file; with few, or where syncfs is missing, each file is
    fsync'ed. Raises :class:`SpoolIOError` on failure.
    """
    if _syncfs is not None and len(fds) >= SYNCFS_THRESHOLD:
        dfd = os.open(dir_for_fs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _syncfs(dfd) != 0:
                err = ctypes.get_errno()
                raise SpoolIOError(f"syncfs of {dir_for_fs} failed: {os.strerror(err)}")
        finally:
            os.close(dfd)
        return
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise SpoolIOError(f"fsync failed: {exc.strerror}") from None


def _tmp_name(name: str) -> str:
    return f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def write_tmp(tmp_dir: Path, name: str, data: bytes) -> tuple[Path, int]:
    """Create a new tmp file holding ``data``; return its path and open fd.

    Raises :class:`SpoolIOError` (ENOSPC, EACCES, EFBIG, ...) after removing
    the partial file.
    """
    path = tmp_dir / _tmp_name(name)
    try:
        fd = os.open(path, O_CREATE, FILE_MODE)
    except OSError as exc:
        raise SpoolIOError(f"cannot create {path}: {exc.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        os.close(fd)
        _unlink_quiet(path)
        raise SpoolIOError(f"cannot write {path}: {exc.strerror}") from None
    return path, fd


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextmanager
def spool_lock(layout: SpoolLayout, name: str, *, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on ``run/<name>.lock`` for the ``with`` body.

    Raises :class:`SpoolIOError` if the lock file cannot be opened and, with
    ``blocking=False``, :class:`poetctl.errors.TemporaryFailure` if it is held.
    """
    from ..errors import TemporaryFailure

    path = layout.run / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise SpoolIOError(f"cannot open lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise TemporaryFailure(f"{path} is held by another process; try again later") from None
        yield
    finally:
        os.close(fd)


def commit(
    layout: SpoolLayout,
    dest: Path,
    items: Sequence[tuple[str, bytes, bool]],
) -> list[bool]:
    """Durably add files to ``dest`` as one group.

    ``items`` are ``(event_id, data, keyed)``. ``keyed`` marks ids chosen by a
    caller (idempotency keys, derived ids): those are checked against every
    state of the spool under the emit lock and linked, never renamed, so an
    existing event is never replaced or duplicated. Fresh UUIDv7 ids are
    renamed without checks. Returns, per item, True if it was added and False
    if its id already existed (a no-op). Raises :class:`SpoolIOError` and then
    leaves no new file visible beyond those already reported by a concurrent
    reader as committed (never a partial one).
    """
    made: list[tuple[Path, int]] = []
    try:
        for event_id, data, _ in items:
            made.append(write_tmp(layout.tmp, event_id, data))
        group_sync(layout.tmp, [fd for _, fd in made])
    except BaseException:
        for path, fd in made:
            os.close(fd)
            _unlink_quiet(path)
        raise
    for _, fd in made:
        os.close(fd)

    added = [True] * len(items)
    keyed_idx = [i for i, it in enumerate(items) if it[2]]
    try:
        for i, (event_id, _, keyed) in enumerate(items):
            if not keyed:
                os.rename(made[i][0], dest / (event_id + ".json"))
        if keyed_idx:
            with spool_lock(layout, "emit"):
                for i in keyed_idx:
                    event_id = items[i][0]
                    tmp_path = made[i][0]
                    if layout.locate(event_id) is not None:
                        added[i] = False
                        continue
                    try:
                        os.link(tmp_path, dest / (event_id + ".json"))
                    except FileExistsError:
                        added[i] = False
        for i in keyed_idx:
            _unlink_quiet(made[i][0])
        fsync_dir(dest)
    except OSError as exc:
        for path, _ in made:
            _unlink_quiet(path)
        raise SpoolIOError(f"cannot commit into {dest}: {exc.strerror}") from None
    return added


def write_atomic(directory: Path, name: str, data: bytes, tmp_dir: Path | None = None) -> Path:
    """Durably create or replace ``directory/name`` with ``data`` (tmp, fsync, rename, fsync dir).

    ``tmp_dir`` must be on the same filesystem; it defaults to ``directory``
    (the tmp name starts with a dot and ends in ``.tmp``, which readers skip).
    """
    tmp_path, fd = write_tmp(tmp_dir or directory, name, data)
    try:
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        _unlink_quiet(tmp_path)
        raise SpoolIOError(f"fsync of {tmp_path} failed: {exc.strerror}") from None
    os.close(fd)
    target = directory / name
    try:
        os.rename(tmp_path, target)
    except OSError as exc:
        _unlink_quiet(tmp_path)
        raise SpoolIOError(f"cannot rename into {target}: {exc.strerror}") from None
    fsync_dir(directory)
    return target


def is_enospc(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
