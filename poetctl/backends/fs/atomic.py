"""Durable replacement of one file (tmp, fsync, rename, directory fsync), moved out of writer.py (its size).

Readers skip the tmp names (a leading dot, ``.tmp`` at the end), so a crash
leaves either the old file or the new one, plus at worst a hidden leftover.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import SpoolIOError
from .layout import FILE_MODE, fsync_dir

O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
