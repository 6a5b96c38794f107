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
        # CDLL(None): the symbols already linked into the interpreter (libc), no ctypes.util search.
        fn = ctypes.CDLL(None, use_errno=True).syncfs
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
    if its id already existed (a no-op). On failure raises
    :class:`SpoolIOError` having removed its tmp files: no partial file is
    ever visible in ``dest``.
    """
    # Directory fds and bare names: no Path objects and shorter kernel lookups per file.
    tfd = _open_dir(layout.tmp)
    try:
        dfd = _open_dir(dest)
    except BaseException:
        os.close(tfd)
        raise
    try:
        names = _write_group(tfd, layout.tmp, items)
        return _publish(layout, dest, tfd, dfd, items, names)
    finally:
        os.close(tfd)
        os.close(dfd)


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpoolIOError(f"cannot open directory {path}: {exc.strerror}") from None


def _write_group(tfd: int, tmp_dir: Path, items: Sequence[tuple[str, bytes, bool]]) -> list[str]:
    """Write every item to a tmp file and make them all durable; return the tmp names."""
    # With syncfs the files can be closed at once (one flush covers them all, and a
    # large batch never runs into the open-files limit); otherwise fsync each.
    use_syncfs = _syncfs is not None and len(items) >= SYNCFS_THRESHOLD
    prefix = f".{os.getpid()}.{os.urandom(6).hex()}."
    names: list[str] = []
    fds: list[int] = []
    try:
        for i, (_, data, _) in enumerate(items):
            name = f"{prefix}{i}.tmp"
            fd = os.open(name, O_CREATE, FILE_MODE, dir_fd=tfd)
            names.append(name)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                if use_syncfs:
                    os.close(fd)
                else:
                    fds.append(fd)
        if use_syncfs:
            assert _syncfs is not None
            if _syncfs(tfd) != 0:
                raise OSError(ctypes.get_errno(), f"syncfs: {os.strerror(ctypes.get_errno())}")
        else:
            for fd in fds:
                os.fsync(fd)
    except BaseException as exc:
        _unlink_names(tfd, names)
        if isinstance(exc, OSError):
            raise SpoolIOError(f"cannot write into {tmp_dir}: {exc.strerror or exc}") from None
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return names


def _publish(
    layout: SpoolLayout,
    dest: Path,
    tfd: int,
    dfd: int,
    items: Sequence[tuple[str, bytes, bool]],
    names: list[str],
) -> list[bool]:
    """Rename (fresh ids) or link (keyed ids) the synced tmp files into ``dest``; fsync it."""
    added = [True] * len(items)
    keyed_idx = [i for i, it in enumerate(items) if it[2]]
    try:
        for i, (event_id, _, keyed) in enumerate(items):
            if not keyed:
                os.rename(names[i], event_id + ".json", src_dir_fd=tfd, dst_dir_fd=dfd)
        if keyed_idx:
            with spool_lock(layout, "emit"):
                for i in keyed_idx:
                    event_id = items[i][0]
                    if layout.locate(event_id) is not None:
                        added[i] = False
                        continue
                    try:
                        os.link(names[i], event_id + ".json", src_dir_fd=tfd, dst_dir_fd=dfd)
                    except FileExistsError:
                        added[i] = False
            _unlink_names(tfd, [names[i] for i in keyed_idx])
        os.fsync(dfd)
    except OSError as exc:
        _unlink_names(tfd, names)
        raise SpoolIOError(f"cannot commit into {dest}: {exc.strerror}") from None
    return added


def _unlink_names(dir_fd: int, names: Sequence[str]) -> None:
    for n in names:
        try:
            os.unlink(n, dir_fd=dir_fd)
        except OSError:
            pass


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
