"""Filesystem primitives for commands that delete or move: never follow a link, never leave the spool.

:class:`SpoolDir` opens one directory of the spool component by component
with ``O_NOFOLLOW`` below the spool root, then works only relative to that
descriptor (``scandir(fd)``, ``lstat``/``unlink`` with ``dir_fd``). A
directory swapped for a symlink, or a symlink planted inside, can therefore
never redirect a deletion outside the spool, and nothing is ever descended
into. The spool root itself may be a symlink: the operator chose it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import SpoolIOError
from ..spool.layout import SpoolLayout

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class SpoolDir:
    """One directory of a spool, opened without following links below the root.

    ``rel`` is a path relative to the spool root, e.g. ``events/processed``.
    Raises FileNotFoundError if it does not exist and :class:`SpoolIOError`
    if a component is a symlink or not a directory.
    """

    def __init__(self, layout: SpoolLayout, rel: str) -> None:
        self.path = layout.root / rel
        try:
            fd = os.open(layout.root, DIR_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise SpoolIOError(f"cannot open {layout.root}: {exc.strerror}") from None
        try:
            for part in rel.split("/"):
                try:
                    nfd = os.open(part, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise SpoolIOError(
                            f"{self.path}: {part} is a symlink or not a directory; refusing to work through it"
                        ) from None
                    if exc.errno == errno.ENOENT:
                        raise
                    raise SpoolIOError(f"cannot open {self.path}: {exc.strerror}") from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __enter__(self) -> SpoolDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def entries(self) -> Iterator[os.DirEntry[str]]:
        """Every entry (no ``.``/``..``); ``DirEntry.is_*`` must be called with follow_symlinks=False."""
        with os.scandir(self.fd) as it:
            yield from it

    def lstat(self, name: str) -> os.stat_result:
        return os.lstat(name, dir_fd=self.fd)

    def is_regular(self, name: str) -> bool | None:
        """True for a regular file, False for anything else (links included), None if absent."""
        try:
            return stat.S_ISREG(self.lstat(name).st_mode)
        except FileNotFoundError:
            return None

    def unlink(self, name: str) -> bool:
        """Remove the name (a link itself, never its target); False if it was already gone."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def unlink_regular(self, name: str) -> bool | None:
        """Remove ``name`` only if it is a regular file. True removed, None absent, False not regular."""
        reg = self.is_regular(name)
        if not reg:
            return reg
        return True if self.unlink(name) else None

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise SpoolIOError(f"fsync of {self.path} failed: {exc.strerror}") from None


def open_dir(layout: SpoolLayout, rel: str) -> SpoolDir | None:
    """:class:`SpoolDir` or None if the directory does not exist."""
    try:
        return SpoolDir(layout, rel)
    except FileNotFoundError:
        return None


def _load_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return,unused-ignore]


_renameat2 = _load_renameat2()
AT_FDCWD = -100


def rename_noreplace(src: Path, dst: Path) -> None:
    """Atomically move ``src`` to ``dst``; FileExistsError if ``dst`` exists (nothing moved).

    Uses renameat2(RENAME_NOREPLACE). Where the kernel or filesystem lacks it,
    falls back to link + unlink, which is also never-replacing but shows the
    file under both names for an instant.
    """
    if _renameat2 is not None:
        if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    os.link(src, dst, follow_symlinks=False)
    os.unlink(src)


def replace_existing(src: Path, dst: Path) -> None:
    """Atomically put ``src`` in place of ``dst`` only if ``dst`` still exists; FileNotFoundError otherwise.

    renameat2(RENAME_EXCHANGE) swaps the two names, then the old content (now
    at ``src``) is unlinked; unlike a plain rename this never re-creates a
    ``dst`` that someone moved away meanwhile. Without RENAME_EXCHANGE it
    checks and renames (a window of a few microseconds).
    """
    if _renameat2 is not None:
        if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_EXCHANGE) == 0:
            os.unlink(src)
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if not os.path.lexists(dst):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(dst))
    os.rename(src, dst)
