"""The daemon's log: one stderr record per line for each thing an operator must know about.

Everything the daemon reports goes through the functions below (their names
and arguments are the call sites' contract); the rendering lives in
:mod:`poetctl.observability.logs`: JSON lines when stderr is not a terminal,
a readable coloured line on a terminal (``--log-format json|console``).
Each record carries ``ts``, ``level``, ``msg`` and, where relevant,
``event_id``, ``correlation_id``, ``type``, ``handler``, ``attempt``,
``duration_ms`` (and ``reason``, ``error``, ...). The stdlib record keeps the
fields as ``record.poet`` (a dict).

Levels (the seed's), and the flags that show them (``--log-level``,
``POET_LOG_LEVEL``; ``-q`` is ``error``, ``-v`` is ``debug``):

* ERROR: an event left the normal path (dead-lettered, quarantined) or the
  system failed (cannot emit an alert, cannot read the spool for metrics).
* WARN (default): potential issues - a handler failed and will be retried; the
  daemon died while handling an event; a dead daemon's events were recovered;
  a file cannot be read yet; the index was reconciled after a crash.
* INFO (default): state changes - start and stop, alerts firing and resolving.
* DEBUG: operation details, e.g. where in the handler an exception was raised.

Records hold ids, types, handler names, reasons and error messages
(truncated, control characters escaped, credentials in URLs and
``token=``-like pairs masked) - never payloads.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Any

from ..observability.logs import console_line

logger = logging.getLogger("poetctl.daemon")

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO}
LEVELS["debug"] = logging.DEBUG


def setup(verbosity: int = 0, *, level: str | None = None, fmt: str | None = None) -> None:
    """Send the daemon's log to stderr.

    ``level`` (error, warn, info, debug; else ``POET_LOG_LEVEL``) wins over
    ``verbosity`` -1 (``-q``), 0 (default: info), 1+ (``-v``: debug). ``fmt``
    is ``json``, ``console`` or None/``auto`` (console on a terminal).
    """
    from ..observability.logs import install

    name = level or os.environ.get("POET_LOG_LEVEL") or None
    if name is not None:
        lvl = LEVELS.get(name.strip().lower())
        if lvl is None:
            raise ValueError(f"log level {name!r}: expected one of error, warn, info, debug")
    else:
        lvl = logging.ERROR if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    install(logger, lvl, fmt or os.environ.get("POET_LOG_FORMAT") or "auto")


_context = threading.local()  # the failing run on this thread: (event_id, correlation_id, duration_ms)


def set_context(event_id: str, correlation_id: str | None, duration_ms: float | None) -> None:
    """Remember the handler run that just failed on this thread (a middleware calls it from ``after_handle``).

    Records about that event logged next on this thread (``handler failed``,
    ``dead-lettered``) get its ``correlation_id`` and ``duration_ms`` even when
    the caller does not pass them.
    """
    _context.run = (event_id, correlation_id, duration_ms)


def _log(level: int, message: str, **fields: Any) -> None:
    """One record: ``message`` plus every field that is not None.

    The record's own message is the whole console line, so even Python's
    last-resort handler (no :func:`setup`, e.g. a daemon run in-process)
    prints every field; the formatters render ``record.poet`` instead.
    """
    if not logger.isEnabledFor(level):
        return
    run = getattr(_context, "run", None)
    if run is not None and fields.get("event_id") == run[0]:
        if fields.get("correlation_id") is None:
            fields["correlation_id"] = run[1]
        if fields.get("duration_ms") is None and "attempt" in fields:
            fields["duration_ms"] = run[2]
    kept = {k: v for k, v in fields.items() if v is not None}
    logger.log(level, "%s", console_line(level, message, kept), extra={"poet": {"msg": message, **kept}})


def error(message: str, **fields: Any) -> None:
    _log(logging.ERROR, message, **fields)


def info(message: str, **fields: Any) -> None:
    _log(logging.INFO, message, **fields)


def warning(message: str, **fields: Any) -> None:
    _log(logging.WARNING, message, **fields)


def debug(message: str, **fields: Any) -> None:
    _log(logging.DEBUG, message, **fields)


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception (what the dead letter records too)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _origin(exc: BaseException) -> str | None:
    """``file.py:LINE in func`` of the innermost frame (debug only)."""
    if not logger.isEnabledFor(logging.DEBUG):
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def handler_failed(
    event_id: str,
    event_type: str,
    handler: str,
    exc: BaseException | str,
    attempt: int,
    max_attempts: int,
    tb: str = "",
    *,
    correlation_id: str | None = None,
    duration_ms: float | None = None,
) -> None:
    """A handler raised (its attempt is recorded; the event is retried or dead-lettered next).

    ``exc`` is the exception, or its :func:`error_text` with ``tb`` its formatted traceback.
    """
    _log(
        logging.WARNING,
        "handler failed",
        event_id=event_id,
        correlation_id=correlation_id,
        type=event_type,
        handler=handler,
        attempt=attempt,
        max_attempts=max_attempts,
        duration_ms=duration_ms,
        error=exc if isinstance(exc, str) else error_text(exc),
        at=_origin(exc) if not isinstance(exc, str) else _origin_of_text(tb),
    )


def _origin_of_text(tb: str) -> str | None:
    """:func:`_origin` from a formatted traceback (the last ``File "...", line N, in f`` line)."""
    if not tb or not logger.isEnabledFor(logging.DEBUG):
        return None
    for line in reversed(tb.splitlines()):
        line = line.strip()
        if line.startswith('File "'):
            path, _, rest = line[6:].partition('", line ')
            lineno, _, func = rest.partition(", in ")
            return f"{os.path.basename(path)}:{lineno} in {func}"
    return None


def died_while_handling(event_id: str, event_type: str, handler: str, attempt: int, max_attempts: int) -> None:
    """A previous daemon died while ``handler`` ran this event; the attempt counted."""
    _log(
        logging.WARNING,
        "the daemon died while handling it",
        event_id=event_id,
        type=event_type,
        handler=handler,
        attempt=attempt,
        max_attempts=max_attempts,
    )


def dead_lettered(
    event_id: str,
    event_type: str,
    reason: str,
    handler: str | None,
    attempts: int,
    error: str | None,
    *,
    correlation_id: str | None = None,
) -> None:
    _log(
        logging.ERROR,
        "dead-lettered",
        event_id=event_id,
        correlation_id=correlation_id,
        type=event_type,
        handler=handler,
        reason=reason,
        attempt=attempts,
        error=error,
    )


def quarantined(where: str, reason: str, detail: str) -> None:
    _log(logging.ERROR, "quarantined", file=where, reason=reason, detail=detail)


def unreadable(where: str, detail: str) -> None:
    """A file the daemon may not read: left in pending/ (logged once per file)."""
    _log(logging.WARNING, "cannot read event; left in pending/", file=where, reason="unreadable", detail=detail)


def recovered(count: int) -> None:
    _log(logging.WARNING, "recovered in-flight events of dead daemons", events=count)


def reconciled(added: int, fixed: int, removed: int, owners: list[str]) -> None:
    _log(
        logging.WARNING,
        "index reconciled after a crash",
        added=added,
        fixed=fixed,
        removed=removed,
        owners=",".join(owners),
    )


__all__ = [
    "LEVELS",
    "dead_lettered",
    "debug",
    "died_while_handling",
    "error",
    "error_text",
    "handler_failed",
    "info",
    "logger",
    "quarantined",
    "reconciled",
    "recovered",
    "set_context",
    "setup",
    "unreadable",
    "warning",
]
