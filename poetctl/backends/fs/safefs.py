"""Filesystem primitives for everything that reads, moves or deletes spool files: never follow a link.

:class:`SpoolDir` opens one directory of the spool component by component
with ``O_NOFOLLOW`` below the spool root, then works only relative to that
descriptor (``scandir(fd)``; ``lstat``, ``open``, ``rename``, ``unlink``
with ``dir_fd``; files read with ``O_NOFOLLOW``). A directory swapped for a
symlink, or a symlink planted inside, can therefore never redirect a read,
a move or a deletion outside the spool, and nothing is ever descended into.
A directory that is a link raises :class:`LinkedDir` (a
:class:`~poetctl.errors.SpoolIOError`, exit 74); :func:`refuse_linked` checks
a command's directories before it starts. The spool root itself may be a
symlink: the operator chose it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ...errors import SpoolIOError
from .layout import DIR_MODE, FILE_MODE, SpoolLayout

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class SpoolDir:
    """One directory of a spool, opened without following links below the root.

    ``rel`` is a path relative to the spool root, e.g. ``events/processed``.
    Raises FileNotFoundError if it does not exist and :class:`LinkedDir` (a
    :class:`SpoolIOError`, 74) if a component is a symlink or not a directory.
    """

    def __init__(self, layout: SpoolLayout, rel: str) -> None:
        self.root = layout.root
        self.rel = rel
        self.path = layout.root / rel
        try:
            fd = os.open(layout.root, DIR_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise SpoolIOError(f"cannot open {layout.root}: {exc.strerror}") from None
        done: list[str] = []
        try:
            for part in [p for p in rel.split("/") if p]:  # "" is the root itself
                nfd = _open_child(fd, part, layout.root.joinpath(*done, part))
                done.append(part)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    @classmethod
    def _adopt(cls, root: Path, rel: str, fd: int) -> SpoolDir:
        d = cls.__new__(cls)
        d.root, d.rel, d.path, d.fd = root, rel, root / rel, fd
        return d

    def child(self, name: str) -> SpoolDir:
        """The subdirectory ``name``, opened relative to this one without following a link."""
        rel = f"{self.rel}/{name}" if self.rel else name
        return SpoolDir._adopt(self.root, rel, _open_child(self.fd, name, self.path / name))

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

    def names(self) -> list[str]:
        """The names of every entry (empty if the directory vanished meanwhile)."""
        try:
            return os.listdir(self.fd)
        except FileNotFoundError:
            return []

    def lstat(self, name: str) -> os.stat_result:
        return os.lstat(name, dir_fd=self.fd)

    def exists(self, name: str) -> bool:
        """True if ``name`` is there (a dangling link too)."""
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def is_regular(self, name: str) -> bool | None:
        """True for a regular file, False for anything else (links included), None if absent."""
        try:
            return stat.S_ISREG(self.lstat(name).st_mode)
        except FileNotFoundError:
            return None

    def is_dir(self, name: str) -> bool:
        """True for a real subdirectory (never a link to one)."""
        try:
            return stat.S_ISDIR(self.lstat(name).st_mode)
        except FileNotFoundError:
            return False

    def same_file(self, name: str, other: SpoolDir, other_name: str) -> bool:
        """True if ``name`` here and ``other_name`` in ``other`` are the same inode (hard links of one file)."""
        try:
            a, b = self.lstat(name), other.lstat(other_name)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def read(self, name: str, max_bytes: int) -> bytes:
        """A regular file's bytes (never through a link); CorruptEvent otherwise, FileNotFoundError if gone."""
        from .reader import read_bytes

        return read_bytes(name, max_bytes, dir_fd=self.fd, where=str(self.path / name))

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

    def rmdir(self, name: str) -> bool:
        """Remove an empty subdirectory; False if it is gone, not empty or not a directory."""
        try:
            os.rmdir(name, dir_fd=self.fd)
        except OSError:
            return False
        return True

    def rename(self, name: str, dst: SpoolDir, dst_name: str, *, replace: bool = False) -> None:
        """Move ``name`` (whatever it is; a link is moved, not followed) into ``dst``.

        Never replaces an existing ``dst_name`` unless ``replace``: FileExistsError then.
        """
        if replace:
            os.rename(name, dst_name, src_dir_fd=self.fd, dst_dir_fd=dst.fd)
        else:
            rename_noreplace_at(self.fd, name, dst.fd, dst_name)

    def create(self, name: str, data: bytes) -> None:
        """Durably write a new file ``name`` (tmp, fsync, rename without replacing: FileExistsError if taken).

        The directory itself is not fsynced (callers batch that).
        """
        tmp = f".{os.getpid()}.{os.urandom(6).hex()}.tmp"  # short: ``name`` may be near NAME_MAX
        self._write_tmp(tmp, data)
        try:
            rename_noreplace_at(self.fd, tmp, self.fd, name)
        except BaseException:
            self.unlink(tmp)
            raise

    def write_atomic(self, name: str, data: bytes) -> None:
        """Durably create or replace ``name`` (tmp, fsync, rename, fsync of this directory)."""
        tmp = f".{os.getpid()}.{os.urandom(6).hex()}.tmp"
        self._write_tmp(tmp, data)
        try:
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            self.unlink(tmp)
            raise SpoolIOError(f"cannot rename into {self.path / name}: {exc.strerror}") from None
        self.fsync()

    def _write_tmp(self, tmp: str, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, FILE_MODE, dir_fd=self.fd)
        except OSError as exc:
            raise SpoolIOError(f"cannot create a file in {self.path}: {exc.strerror}") from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self.unlink(tmp)
            raise SpoolIOError(f"cannot write in {self.path}: {exc.strerror}") from None
        os.close(fd)

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise SpoolIOError(f"fsync of {self.path} failed: {exc.strerror}") from None


class LinkedDir(SpoolIOError):
    """A spool directory (below the root) is a symlink or not a directory: nothing works through it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is a symlink or not a directory; refusing to work through it")
        self.path = path


def _open_child(fd: int, name: str, path: Path) -> int:
    try:
        return os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LinkedDir(path) from None
        if exc.errno == errno.ENOENT:
            raise
        raise SpoolIOError(f"cannot open {path}: {exc.strerror}") from None


def make_dir(layout: SpoolLayout, rel: str) -> SpoolDir:
    """Open ``rel``, creating missing components (0750) on the way, each relative to its no-follow parent.

    A component that is a link is never created through: :class:`LinkedDir` (74).
    """
    d = SpoolDir(layout, "")
    try:
        for part in rel.split("/"):
            try:
                os.mkdir(part, DIR_MODE, dir_fd=d.fd)
                d.fsync()
            except FileExistsError:
                pass  # a link here is refused by child()
            except OSError as exc:
                raise SpoolIOError(f"cannot create {d.path / part}: {exc.strerror}") from None
            nd = d.child(part)
            d.close()
            d = nd
    except BaseException:
        d.close()
        raise
    return d


def open_dir(layout: SpoolLayout, rel: str) -> SpoolDir | None:
    """:class:`SpoolDir` or None if the directory does not exist."""
    try:
        return SpoolDir(layout, rel)
    except FileNotFoundError:
        return None


def linked_dir(layout: SpoolLayout, rel: str) -> Path | None:
    """The first component of ``rel`` below the root that is a link (or not a directory), else None."""
    p = layout.root
    for part in rel.split("/"):
        p = p / part
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        except OSError:
            return p
        if not stat.S_ISDIR(st.st_mode):
            return p
    return None


def refuse_linked(layout: SpoolLayout, rels: Iterable[str]) -> None:
    """Raise :class:`LinkedDir` for the first of the spool directories ``rels`` that is a link.

    The check before a command starts, so it refuses before reading anything;
    the work itself then goes through :class:`SpoolDir` descriptors, which
    catch a directory swapped for a link later.
    """
    for rel in rels:
        bad = linked_dir(layout, rel)
        if bad is not None:
            raise LinkedDir(bad)


_UNLOADED: Any = object()
_renameat2_fn: Any = _UNLOADED


def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2, looked up at the first rename (not at import: ctypes and the lookup cost
    milliseconds that read-only commands such as ``status`` need not pay)."""
    global _renameat2_fn
    if _renameat2_fn is _UNLOADED:
        import ctypes

        try:
            # dlopen(NULL): the symbols already loaded, libc's among them (no ldconfig subprocess).
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2_fn = fn
        except (OSError, AttributeError):
            _renameat2_fn = None
    return _renameat2_fn  # type: ignore[no-any-return]


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


AT_FDCWD = -100


def rename_noreplace(src: Path, dst: Path) -> None:
    """Atomically move ``src`` to ``dst``; FileExistsError if ``dst`` exists (nothing moved).

    Uses renameat2(RENAME_NOREPLACE). Where the kernel or filesystem lacks it,
    falls back to link + unlink, which is also never-replacing but shows the
    file under both names for an instant.
    """
    rename_noreplace_at(AT_FDCWD, src, AT_FDCWD, dst)


def rename_noreplace_at(src_fd: int, src: str | Path, dst_fd: int, dst: str | Path) -> None:
    """:func:`rename_noreplace` with names relative to directory descriptors (AT_FDCWD: plain paths)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = _errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    sfd = None if src_fd == AT_FDCWD else src_fd
    dfd = None if dst_fd == AT_FDCWD else dst_fd
    # A directory cannot be hard-linked: fall back to a checked rename for it (a window of microseconds).
    if stat.S_ISDIR(os.lstat(src, dir_fd=sfd).st_mode):
        try:
            os.lstat(dst, dir_fd=dfd)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=sfd, dst_dir_fd=dfd)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.link(src, dst, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    os.unlink(src, dir_fd=sfd)


def replace_existing(src: Path, dst: Path) -> None:
    """Atomically put ``src`` in place of ``dst`` only if ``dst`` still exists; FileNotFoundError otherwise.

    renameat2(RENAME_EXCHANGE) swaps the two names, then the old content (now
    at ``src``) is unlinked; unlike a plain rename this never re-creates a
    ``dst`` that someone moved away meanwhile. Without RENAME_EXCHANGE it
    checks and renames (a window of a few microseconds).
    """
    replace_existing_at(AT_FDCWD, src, AT_FDCWD, dst)


def replace_existing_at(src_fd: int, src: str | Path, dst_fd: int, dst: str | Path) -> None:
    """:func:`replace_existing` with names relative to directory descriptors (AT_FDCWD: plain paths)."""
    sfd = None if src_fd == AT_FDCWD else src_fd
    dfd = None if dst_fd == AT_FDCWD else dst_fd
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_EXCHANGE) == 0:
            os.unlink(src, dir_fd=sfd)
            return
        err = _errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    os.lstat(dst, dir_fd=dfd)  # FileNotFoundError if it is gone
    os.rename(src, dst, src_dir_fd=sfd, dst_dir_fd=dfd)


def probe_writable(layout: SpoolLayout) -> str | None:
    """None if a file can be created and removed in ``events/tmp`` (readiness), else why not.

    The probe is created with O_EXCL|O_NOFOLLOW through a descriptor of the
    real directory, in the one place only commits write and readers never look.
    """
    name = f".readyz-{os.getpid()}-{os.urandom(6).hex()}"
    try:
        with SpoolDir(layout, "events/tmp") as tmp:
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp.fd
            )
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                tmp.unlink(name)
    except SpoolIOError as exc:  # a linked or missing directory: SpoolDir refuses it
        return exc.message
    except OSError as exc:
        return f"cannot write in {layout.tmp}: {exc.strerror}"
    return None
