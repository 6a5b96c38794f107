"""The daemon's log: one stderr line per thing an operator must know about.

Everything the daemon reports goes through the functions below, so a later
formatter (JSON lines) or middleware (metrics) has one place to hook in: the
logger is ``poetctl.daemon`` and each record carries its fields as
``record.poet`` (a dict) besides the rendered line.

Levels, and the ``poetctl daemon`` flag that shows them:

* ERROR (always, also with ``-q``): an event left the normal path - dead-lettered
  or quarantined.
* WARNING (default): a handler failed and will be retried; the daemon died while
  handling an event; a dead daemon's events were recovered; a file cannot be read
  yet; the index was reconciled after a crash.
* INFO (default): start and stop.
* DEBUG (``-v``): detail, e.g. where in the handler an exception was raised.

Lines hold ids, types, handler names, reasons and error messages (truncated,
control characters escaped) - never payloads.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

logger = logging.getLogger("poetctl.daemon")

MAX_VALUE = 300  # characters of one field value (error messages can be long)


class LineFormatter(logging.Formatter):
    """``poetctl: [warning: |error: ]<message>`` - the CLI's usual diagnostic shape."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "poetctl: "
        if record.levelno >= logging.ERROR:
            prefix += "error: "
        elif record.levelno >= logging.WARNING:
            prefix += "warning: "
        return prefix + record.getMessage()


def setup(verbosity: int = 0) -> None:
    """Send the daemon's log to stderr: ``verbosity`` -1 (``-q``), 0 (default), 1+ (``-v``)."""
    level = logging.ERROR if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    for h in list(logger.handlers):
        if getattr(h, "_poetctl", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    handler._poetctl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _escape(s: str) -> str:
    """Control and other non-printable characters as ``\\xNN``/``\\uNNNN`` (no terminal escapes)."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in s)


def _value(v: object) -> str:
    s = str(v)
    if len(s) > MAX_VALUE:
        s = s[:MAX_VALUE] + "..."
    if s and not any(c in s for c in ' "=\\') and s.isprintable():
        return s
    return '"' + _escape(s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _log(level: int, message: str, **fields: Any) -> None:
    """``message`` then ``key=value`` for every field that is not None (the line is built here,
    so even Python's last-resort handler prints it whole)."""
    if not logger.isEnabledFor(level):
        return
    fields = {k: v for k, v in fields.items() if v is not None}
    line = " ".join([_escape(message), *(f"{k}={_value(v)}" for k, v in fields.items())])
    logger.log(level, "%s", line, extra={"poet": {"message": message, **fields}})


def info(message: str, **fields: Any) -> None:
    _log(logging.INFO, message, **fields)


def warning(message: str, **fields: Any) -> None:
    _log(logging.WARNING, message, **fields)


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception (what the dead letter records too)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _origin(exc: BaseException) -> str | None:
    """``file.py:LINE in func`` of the innermost frame (``-v`` only)."""
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
) -> None:
    """A handler raised (its attempt is recorded; the event is retried or dead-lettered next).

    ``exc`` is the exception, or its :func:`error_text` with ``tb`` its formatted traceback.
    """
    _log(
        logging.WARNING,
        "handler failed",
        event=event_id,
        type=event_type,
        handler=handler,
        attempt=f"{attempt}/{max_attempts}",
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
        event=event_id,
        type=event_type,
        handler=handler,
        attempt=f"{attempt}/{max_attempts}",
    )


def dead_lettered(
    event_id: str, event_type: str, reason: str, handler: str | None, attempts: int, error: str | None
) -> None:
    _log(
        logging.ERROR,
        "dead-lettered",
        event=event_id,
        type=event_type,
        handler=handler,
        reason=reason,
        attempts=attempts,
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
    "dead_lettered",
    "died_while_handling",
    "error_text",
    "handler_failed",
    "info",
    "logger",
    "quarantined",
    "reconciled",
    "recovered",
    "setup",
    "unreadable",
    "warning",
]
