"""Replacing a spool's handler state (``state/``, ``feedback/``) with a rebuilt one, atomically.

``poetctl state rebuild --apply`` writes the rebuilt state through the
storage interface into a work spool under ``run/rebuild.<pid>.<n>/`` (same
file system; without --apply it goes to the temp directory and is removed),
then exchanges each of ``state/`` and ``feedback/`` with its rebuilt twin in
one ``renameat2(RENAME_EXCHANGE)`` call: a reader sees the old directory or
the new one, never a mix or a gap. The old state ends up in
``run/state-replaced-<UTC time>/`` (kept for the operator; nothing is
deleted). Where the kernel or libc lacks RENAME_EXCHANGE the swap is two
renames with a moment without the directory (said on stderr).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import time
from pathlib import Path

from ...errors import SpoolIOError
from .layout import SpoolLayout

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_works = itertools.count()


def work_layout(layout: SpoolLayout, inside: bool = True) -> SpoolLayout:
    """A new, empty work spool for the rebuilt state (state/, feedback/, run/).

    ``inside``: under the spool's ``run/`` (same file system, for the swap);
    else in the temp directory, so a rebuild that only compares writes nothing
    in the spool.
    """
    try:
        if inside:
            run = layout.root / "run"
            try:
                os.mkdir(run, 0o750)
            except FileExistsError:
                pass
            root = run / f"rebuild.{os.getpid()}.{next(_works)}"
            os.mkdir(root, 0o750)
        else:
            import tempfile

            root = Path(tempfile.mkdtemp(prefix="poetctl-rebuild."))
        work = SpoolLayout(root)
        for d in (work.state, work.feedback, work.feedback_pending, work.feedback_processed, root / "run"):
            os.mkdir(d, 0o750)
    except OSError as exc:
        raise SpoolIOError(f"cannot create a work directory for the rebuild: {exc.strerror}") from None
    return work


def discard(work: SpoolLayout) -> None:
    """Remove a work spool this process made (only what it holds: regular files and directories)."""
    for dirpath, dirnames, filenames in os.walk(work.root, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    os.rmdir(work.root)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False if this system cannot (then nothing was done)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_state(layout: SpoolLayout, work: SpoolLayout) -> tuple[Path, bool]:
    """Make ``work``'s state/ and feedback/ the spool's; where the old ones went, and if both swaps were atomic."""
    atomic = True
    try:
        for live, new in ((layout.state, work.state), (layout.feedback, work.feedback)):
            if not os.path.lexists(live):
                os.rename(new, live)
                os.mkdir(new, 0o750)  # the "old" side: empty
            elif not _exchange(new, live):
                atomic = False
                os.rename(live, f"{new}.old")
                os.rename(new, live)
                os.rename(f"{new}.old", new)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = layout.root / "run" / f"state-replaced-{stamp}-{os.getpid()}"
        os.rename(work.root, kept)
    except OSError as exc:
        raise SpoolIOError(f"cannot replace {layout.state}: {exc.strerror}") from None
    return kept, atomic


__all__ = ["discard", "replace_state", "work_layout"]
