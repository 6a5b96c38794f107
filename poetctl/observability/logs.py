"""Rendering of the daemon's log records: JSON lines or a readable coloured console line.

The standard library's ``logging`` with one JSON formatter, not structlog:
the daemon already logs through ``logging`` (``poetctl.daemon``), a
formatter is all JSON lines need, orjson is already a dependency, and
structlog would be a new base dependency costing import time for nothing
the formatter does not do. ``poetctl emit`` imports neither module.

Values are made safe once, here, for both forms: strings truncated to
:data:`MAX_VALUE` characters, control characters escaped (``\\x1b``, so a
log viewed in a terminal cannot drive it), and secrets masked: credentials
in URLs (``https://user:pass@``), ``token=...``/``key: ...``-like pairs and
``Bearer`` tokens in error messages become ``***``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, TextIO

import orjson

from ..safetext import clean

MAX_VALUE = 300
LEVEL_NAMES = {logging.ERROR: "ERROR", logging.WARNING: "WARN", logging.INFO: "INFO", logging.DEBUG: "DEBUG"}
_COLOURS = {"ERROR": "\x1b[31;1m", "WARN": "\x1b[33m", "INFO": "\x1b[32m", "DEBUG": "\x1b[2m"}
_RESET = "\x1b[0m"
_SECRETS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1***:***@"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
    (
        re.compile(
            r"(?i)\b([a-z0-9_-]*(?:token|secret|password|passwd|api[_-]?key|signature|routing[_-]?key|sig)"
            r"[a-z0-9_-]*)([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;\"']+)"
        ),
        r"\1\2***",
    ),
)


def redact(text: str) -> str:
    """``text`` with credentials masked (URL userinfo, bearer tokens, ``token=...``-like pairs)."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def _bounded(value: Any) -> Any:
    """Numbers and booleans as they are; text with secrets masked, truncated (not yet escaped)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    s = redact(value if isinstance(value, str) else str(value))
    return s[:MAX_VALUE] + "..." if len(s) > MAX_VALUE else s


def safe(value: Any) -> Any:
    """A field value for the JSON form: numbers and booleans as they are, text masked, cut and escaped."""
    v = _bounded(value)
    return clean(v) if isinstance(v, str) else v


def _kv(v: Any) -> str:
    """``key=value`` value: bare when plain, else quoted; control characters made visible last."""
    v = _bounded(v)
    s = f"{v:g}" if isinstance(v, float) else str(v)
    if s and not any(c in s for c in ' "=\\') and s.isprintable():
        return s
    return '"' + clean(s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def console_line(level: int, msg: str, fields: dict[str, Any], colour: bool = False) -> str:
    """``poetctl: warning: handler failed event_id=... type=...`` (level word coloured on a terminal)."""
    name = LEVEL_NAMES.get(level, "INFO")
    word = {"ERROR": "error: ", "WARN": "warning: "}.get(name, "")
    if colour:
        word = f"{_COLOURS[name]}{word or name.lower() + ': '}{_RESET}"
    parts = [f"poetctl: {word}{clean(msg)}"]
    parts += [f"{k}={_kv(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def _ts(created: float) -> str:
    t = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (RFC 3339, UTC, ms), ``level``, ``msg``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "poet", None) or {}
        doc: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": LEVEL_NAMES.get(record.levelno, record.levelname),
            "msg": clean(fields.get("msg", record.getMessage())),
        }
        for k, v in fields.items():
            if k != "msg" and v is not None:
                doc[k] = safe(v)
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = safe(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
        return orjson.dumps(doc).decode()


class ConsoleFormatter(logging.Formatter):
    """The readable form: the CLI's usual ``poetctl: warning: ...`` line, ``key=value`` fields."""

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "poet", None) or {})
        msg = fields.pop("msg", record.getMessage())
        return console_line(record.levelno, msg, fields, self.colour)


def install(logger: logging.Logger, level: int, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """(Re)attach poetctl's one stderr handler to ``logger`` with the chosen form and level."""
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"log format {fmt!r}: expected json or console")
    stream = stream or sys.stderr
    tty = _isatty(stream)
    if fmt == "auto":
        fmt = "console" if tty else "json"
    for h in list(logger.handlers):
        if getattr(h, "_poetctl", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter(colour=tty))
    handler._poetctl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["ConsoleFormatter", "JsonFormatter", "console_line", "install", "redact", "safe"]
