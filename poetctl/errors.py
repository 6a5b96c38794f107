"""Errors that carry their sysexits exit code.

Every user-facing failure is a :class:`PoetError`; the CLI prints its message
(never a traceback) and exits with ``exit_code``. Library callers catch the
subclass they care about.
"""

from __future__ import annotations

# sysexits.h, as documented in the README ("Exit codes").
EX_OK = 0
EX_NOMATCH = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class PoetError(Exception):
    """Base class: a message for humans plus the process exit code."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class Permanent(Exception):
    """Raise from a handler: the event cannot succeed; dead-letter it now, without retries (reason ``permanent``).

    Defined here, not in :mod:`poetctl.daemon.outcomes` (which re-exports it), so that the router can raise
    a permanent error (:class:`poetctl.envelope.CausationDepthExceeded`) without importing the daemon.
    """


class UsageError(PoetError):
    """The call itself is wrong (bad option combination, bad pattern)."""

    exit_code = EX_USAGE


class InvalidData(PoetError):
    """Input that cannot become an event: bad JSON, schema violation, unknown type."""

    exit_code = EX_DATAERR


class UnknownType(InvalidData):
    """An event type with no registered schema."""


class InputMissing(PoetError):
    """A named input file or event does not exist."""

    exit_code = EX_NOINPUT


class BackendUnavailable(PoetError):
    """A backend (NATS, an HTTP integration) cannot be reached."""

    exit_code = EX_UNAVAILABLE


class SpoolIOError(PoetError):
    """The spool cannot be read or written (permissions, full disk, failed fsync)."""

    exit_code = EX_IOERR


class PermissionDenied(SpoolIOError):
    """The spool (or a file in it) cannot be read or written for lack of permission."""

    exit_code = EX_NOPERM


class TemporaryFailure(PoetError):
    """Try again later (a lock is held, a resource is busy)."""

    exit_code = EX_TEMPFAIL


class NoMatch(PoetError):
    """Nothing matched where a match was asked for."""

    exit_code = EX_NOMATCH


class ConfigError(PoetError):
    """poet.toml, a POET_* variable or a library caller's settings are invalid (names the key and what is allowed)."""

    exit_code = EX_CONFIG
