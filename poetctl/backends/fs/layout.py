"""Where everything lives in a spool, and how the tree is created.

::

    <spool>/
      events/tmp/         writers only; never read as events
      events/pending/     committed, waiting for a daemon
      events/inflight/<owner>/   claimed by one daemon process
      events/processed/   handled
      events/dead/        attempts exhausted or expired (+ <id>.error)
      events/corrupt/     quarantined input (+ <name>.reason)
      events/records/     handler completion records of events handed back to pending
      state/<fn>/current.json, state/<fn>/history/<version>.json
      feedback/pending/, feedback/processed/
      run/                locks, heartbeats (run/daemons/) and other runtime files
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...errors import InputMissing, SpoolIOError
from .paths import HEARTBEATS, RUNTIME_DIRS

DIR_MODE = 0o750
FILE_MODE = 0o640
SUFFIX = ".json"


class SpoolLayout:
    """Paths of one spool. Creating it does no I/O; :meth:`init` creates the tree."""

    __slots__ = (
        "corrupt",
        "dead",
        "events",
        "feedback",
        "feedback_pending",
        "feedback_processed",
        "inflight",
        "pending",
        "processed",
        "records",
        "root",
        "run",
        "state",
        "tmp",
    )

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.events = self.root / "events"
        self.tmp = self.events / "tmp"
        self.pending = self.events / "pending"
        self.inflight = self.events / "inflight"
        self.processed = self.events / "processed"
        self.dead = self.events / "dead"
        self.corrupt = self.events / "corrupt"
        self.records = self.events / "records"
        self.state = self.root / "state"
        self.feedback = self.root / "feedback"
        self.feedback_pending = self.feedback / "pending"
        self.feedback_processed = self.feedback / "processed"
        self.run = self.root / "run"

    def dirs(self) -> list[Path]:
        """Every directory of the tree, parents before children."""
        return [
            self.root,
            self.events,
            self.tmp,
            self.pending,
            self.inflight,
            self.processed,
            self.dead,
            self.corrupt,
            self.records,
            self.state,
            self.feedback,
            self.feedback_pending,
            self.feedback_processed,
            self.run,
        ]

    def init(self) -> list[Path]:
        """Create missing directories (mode 0750); return the ones created. Idempotent.

        The root may be a symlink to a directory (``/var/lib/poet`` on a data
        volume: the operator chose it); every directory below it must be a
        real directory, never a link. Raises :class:`SpoolIOError` if a path
        exists but is not a directory (or is a link below the root), or cannot
        be created.
        """
        created = []
        if not self.root.exists():
            if os.path.islink(self.root):
                raise SpoolIOError(f"{self.root} is a dangling symlink (to {os.readlink(self.root)})")
            try:
                os.makedirs(self.root.parent, DIR_MODE, exist_ok=True)
            except OSError as exc:
                raise SpoolIOError(f"cannot create {self.root.parent}: {exc.strerror}") from None
        for d in self.dirs():
            try:
                os.mkdir(d, DIR_MODE)
                created.append(d)
            except FileExistsError:
                if d == self.root:
                    if not d.is_dir():
                        raise SpoolIOError(f"{d} exists but is not a directory") from None
                elif d.is_symlink():
                    raise SpoolIOError(f"{d} is a symlink; links inside the spool are refused") from None
                elif not d.is_dir():
                    raise SpoolIOError(f"{d} exists but is not a directory") from None
            except OSError as exc:
                raise SpoolIOError(f"cannot create {d}: {exc.strerror}") from None
        for d in self.runtime_dirs():
            # Created later by the daemon and the index; refused now if something put a link there.
            if d.is_symlink() or (os.path.lexists(d) and not d.is_dir()):
                raise SpoolIOError(f"{d} is a symlink or not a directory; links inside the spool are refused")
        if created:
            fsync_dir(self.root.parent if self.root in created else self.root)
        return created

    def runtime_dirs(self) -> list[Path]:
        """Directories made on demand (not by :meth:`init`): the daemon's run/ subdirectories and the index."""
        return [*(self.root / rel for rel in RUNTIME_DIRS), self.root / "index"]

    def exists(self) -> bool:
        return self.pending.is_dir()

    def require(self) -> SpoolLayout:
        """Return self if the spool exists, else raise :class:`InputMissing`."""
        if not self.exists():
            raise InputMissing(
                f"no spool at {self.root} (expected {self.pending}); create it with "
                f"'poetctl init --spool {self.root}' or point --spool/POET_SPOOL at one"
            )
        return self

    def require_real(self, *dirs: Path, missing_ok: bool = False) -> SpoolLayout:
        """:meth:`require`, and refuse if any of ``dirs`` (below the root) is a symlink or not a directory.

        For commands that work by path (emit's tmp/ and pending/; the readers'
        event directories): one lstat each, once per process, so nothing is ever
        written or read through a planted link. ``missing_ok`` skips absent ones.
        """
        self.require()
        for d in dirs:
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                if missing_ok:
                    continue
                raise SpoolIOError(f"{d} is missing; run 'poetctl init --spool {self.root}'") from None
            except OSError as exc:
                raise SpoolIOError(f"cannot inspect {d}: {exc.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise SpoolIOError(f"{d} is a symlink or not a directory; refusing to work through it")
        return self

    def read_dirs(self) -> tuple[Path, ...]:
        """What the read commands (tail, correlate, status) look into by path."""
        return (
            self.events,
            self.pending,
            self.inflight,
            self.processed,
            self.dead,
            self.corrupt,
            self.root / "index",
            self.run,
            self.root / HEARTBEATS,
        )

    def event_file(self, directory: Path, event_id: str) -> Path:
        return directory / (event_id + SUFFIX)

    def inflight_dirs(self) -> list[Path]:
        """The per-owner directories under ``events/inflight``."""
        try:
            return [self.inflight / e.name for e in os.scandir(self.inflight) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def locate(self, event_id: str) -> Path | None:
        """Where event ``event_id`` is now, or None.

        States are checked in the direction events flow (pending, inflight,
        processed, dead, corrupt), so an event moved forward concurrently is
        still found.
        """
        name = event_id + SUFFIX
        for d in (self.pending, *self.inflight_dirs(), self.processed, self.dead, self.corrupt):
            p = d / name
            if os.path.lexists(p):
                return p
        return None


def fsync_dir(path: Path) -> None:
    """fsync a directory so renames into it are durable. Raises SpoolIOError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpoolIOError(f"cannot open directory {path}: {exc.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SpoolIOError(f"fsync of {path} failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def same_file(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` both exist and are the same inode (hard links of one file)."""
    try:
        sa, sb = os.stat(a, follow_symlinks=False), os.stat(b, follow_symlinks=False)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def remove_spool(root: Path) -> None:
    """Delete a whole spool tree (the demo's fresh start). A root that is a link is refused (74), never followed.

    ``shutil.rmtree`` walks by directory descriptors where the platform allows
    (Linux), so a link planted inside is removed, not followed.
    """
    import shutil

    if os.path.islink(root):
        raise SpoolIOError(f"{root} is a symlink; refusing to delete through it")
    try:
        shutil.rmtree(root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SpoolIOError(f"cannot remove {root}: {exc.strerror}") from None
