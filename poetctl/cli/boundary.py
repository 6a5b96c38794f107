"""The error boundary every command runs inside, and the root options (no typer here).

Kept apart from :mod:`poetctl.cli.common` (typer's option types) so the
typer-free routes of :mod:`poetctl.cli.fastpath` share the very same boundary
as the typer commands. An exit code leaves as ``SystemExit``: click lets it
through unchanged, so both routes end the same way.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import PoetError
from .output import error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: start-up of the typer-free commands
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])
    T = TypeVar("T")


class Globals:
    """Options given before the command (``poetctl --spool X emit ...``)."""

    spool: Path | None = None
    config: Path | None = None


GLOBALS = Globals()


def load(spool: Path | None = None, config: Path | None = None) -> Any:
    """The effective Config: command options win over global ones."""
    from ..config import load_config

    return load_config(config or GLOBALS.config, spool or GLOBALS.spool)


def errors_to_exit(fn: F) -> F:
    """Turn :class:`PoetError` into a one-line stderr message and its exit code.

    The net under every command: an ``OSError`` nobody handled nearer (a
    directory of the spool that cannot be listed, a file that cannot be
    created, a full disk) and an SQLite error of the index become one line
    naming the path, exit 77 for a permission problem and 74 for any other
    I/O error — never a traceback, and never exit 1, which means "nothing
    matched" or "something was dead-lettered".
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PoetError as exc:
            error(str(exc))
            raise SystemExit(_exit_code(exc)) from None
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): not an error for us.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            raise SystemExit(0) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except Exception as exc:
            failure = io_failure(exc)
            if failure is None:
                raise
            error(failure.message)
            raise SystemExit(failure.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _exit_code(exc: PoetError) -> int:
    """``exc``'s exit code; an I/O error (74) raised because of a permission problem is 77."""
    from ..errors import EX_IOERR, EX_NOPERM

    if exc.exit_code == EX_IOERR and isinstance(exc.__context__, PermissionError):
        return EX_NOPERM
    return exc.exit_code


def io_failure(exc: BaseException) -> PoetError | None:
    """The :class:`PoetError` (74 or 77) an OSError or SQLite error stands for; None for anything else."""
    import errno

    from ..errors import PermissionDenied, SpoolIOError

    if isinstance(exc, OSError):
        path = exc.filename if exc.filename is not None else None
        where = "" if path is None else f": {os.fsdecode(path)}"
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermissionDenied(f"permission denied{where}")
        what = exc.strerror or type(exc).__name__
        return SpoolIOError(f"I/O error: {what}{where}")
    # The C module: the readers use it without sqlite3's wrapper (backends/fs/sqlitelib), and
    # sqlite3.Error is _sqlite3.Error. Never imported: it cannot be an SQLite error.
    sqlite3 = sys.modules.get("_sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        # SQLITE_PERM (3), SQLITE_READONLY (8): the index cannot be written by this user.
        if code is not None and code & 0xFF in (3, 8):
            return PermissionDenied(f"the spool index cannot be written: {exc}")
        return SpoolIOError(f"the spool index failed: {exc}")
    return None


def guarded(fn: Callable[[], T]) -> T:
    """Call ``fn`` inside the same error boundary as :func:`errors_to_exit`."""
    return errors_to_exit(fn)()
