"""What poet.toml may say: every key, its type, its allowed range and its default.

One hand-written table (:data:`SECTIONS`) is the single source of truth for
the file, for the ``POET_*`` variables that override a key, and for the
command-line options that set one (their typer ``min``/``max`` come from
:func:`bounds`). It is plain data on purpose: ``load_config`` runs at every
command's start-up, so checking a file must not import a schema library.

Unknown keys are refused (a typo silently ignored is worse than an error),
except inside the free-form tables ``[nats]`` and
``[external_integrations.<name>]``, whose keys belong to integrations.
Every failure is a :class:`~poetctl.errors.ConfigError` (exit 78) naming
the file (and line when it can be found), the key, and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

DELIVERY_MODES = ("local_only", "nats", "hybrid")
# Envelope fields a partition key may name (attributes of Event); else ``payload.<dotted path>``.
PARTITION_FIELDS = ("id", "type", "source", "topic", "correlation_id", "causation_id")
_PAYLOAD_PATH = r"payload(\.[A-Za-z0-9_-]+)+"  # compiled on first use (re caches it), not at import
# Mirrors schemas/envelope.json metadata.version (a test checks they agree).
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
FREE_FORM = ("nats", "external_integrations")
MAX_SHOWN = 60  # characters of a bad value quoted in an error


class Setting:
    """One key: ``kind`` is int, float, bool, str, choice, duration, strlist, path, pathlist or partition_key.

    ``lo``/``hi`` bound a number (inclusive) or a string's length. A plain
    class, not a dataclass: building ~50 dataclass instances' class at
    import would cost start-up time on every command.
    """

    __slots__ = ("choices", "default", "env", "hi", "kind", "lo", "pattern")

    def __init__(
        self,
        kind: str,
        default: Any,
        lo: float | None = None,
        hi: float | None = None,
        *,
        choices: tuple[str, ...] = (),
        pattern: str | None = None,
        env: str | None = None,
    ) -> None:
        self.kind = kind
        self.default = default
        self.lo = lo
        self.hi = hi
        self.choices = choices
        self.pattern = pattern
        self.env = env

    def expected(self) -> str:
        """What is allowed, in words (used in every error about this key)."""
        k = self.kind
        if k in ("int", "float"):
            what = "an integer" if k == "int" else "a number"
            if self.lo is not None and self.hi is not None:
                return f"{what} from {_num(self.lo)} to {_num(self.hi)}"
            if self.lo is not None:
                return f"{what} >= {_num(self.lo)}"
            return what
        if k == "bool":
            return "true or false"
        if k == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if k == "str":
            if self.pattern is not None:
                return f"a string matching {self.pattern}"
            return f"a string of {_num(self.lo or 0)} to {_num(self.hi or 0)} characters"
        if k == "duration":
            return "a duration like 30s, 5m, 2h, 1d or a number of seconds"
        if k == "strlist":
            return "a list of strings"
        if k == "path":
            return "a path string"
        if k == "pathlist":
            return "a list of path strings"
        return "a field name or list of them: " + ", ".join(PARTITION_FIELDS) + " or payload.<key>[.<key>...]"

    def check(self, value: Any) -> Any:
        """The value normalised (ints for floats become floats, a partition key a list); ValueError if not allowed."""
        k = self.kind
        if k == "bool":
            if isinstance(value, bool):
                return value
        elif k == "int":
            if isinstance(value, int) and not isinstance(value, bool) and self._in_range(value):
                return value
        elif k == "float":
            if isinstance(value, int | float) and not isinstance(value, bool):
                f = float(value)
                if math.isfinite(f) and self._in_range(f):
                    return f
        elif k == "choice":
            if value in self.choices:
                return value
        elif k == "str":
            if isinstance(value, str) and self._str_ok(value):
                return value
        elif k == "duration":
            return self._duration(value)
        elif k in ("strlist", "pathlist"):
            if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
                return list(value)
        elif k == "path":
            if isinstance(value, str) and value and "\0" not in value:
                return value
        elif k == "partition_key":
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list) and items and all(_partition_ok(v) for v in items):
                return list(items)
        raise ValueError(self.expected())

    def parse_env(self, text: str) -> Any:
        """The value of an environment variable for this key (text), checked like a file value."""
        k = self.kind
        value: Any = text
        if k == "bool":
            t = text.strip().lower()
            value = True if t in ("1", "true", "yes", "on") else False if t in ("0", "false", "no", "off") else text
        elif k == "int":
            try:
                value = int(text.strip())
            except ValueError:
                pass
        elif k == "strlist":
            value = [h.strip() for h in text.split(",") if h.strip()]
        elif k == "pathlist":
            import os

            value = [p for p in text.split(os.pathsep) if p]
        return self.check(value)

    def _in_range(self, v: float) -> bool:
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)

    def _str_ok(self, v: str) -> bool:
        if self.pattern is not None:
            return re.fullmatch(self.pattern, v) is not None
        return self._in_range(len(v)) and v.isprintable()

    def _duration(self, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and value >= 0:
                return value
        elif isinstance(value, str):
            # parse_duration is what `status` applies; imported only when a file sets a duration.
            from .errors import UsageError
            from .ops.status import parse_duration

            try:
                parse_duration(value, "")
                return value
            except UsageError:
                pass
        raise ValueError(self.expected())


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _partition_ok(v: Any) -> bool:
    return isinstance(v, str) and (v in PARTITION_FIELDS or re.fullmatch(_PAYLOAD_PATH, v) is not None)


_DAY = 86400.0
_BIG = 10_000_000

# section ("" = top level) -> key -> Setting. Defaults mirror the dataclasses that use them
# (DaemonOptions, LearningSettings, HandlerSwitches, cli.status.STATUS_DEFAULTS); tests check they agree.
SECTIONS: dict[str, dict[str, Setting]] = {
    "": {
        "storage_path": Setting("path", ".poet/pubsub", env="POET_SPOOL"),
        "environment": Setting("str", "dev", 1, 64, env="POET_ENVIRONMENT"),
        "service": Setting("str", "poet", 1, 256, env="POET_SERVICE"),
        "source": Setting("str", "poet", 1, 256, env="POET_SOURCE"),
        "delivery_mode": Setting("choice", "local_only", choices=DELIVERY_MODES, env="POET_DELIVERY_MODE"),
        "max_event_bytes": Setting("int", 1024 * 1024, 256, 64 * 1024 * 1024, env="POET_MAX_EVENT_BYTES"),
        "persistence_enabled": Setting("bool", True),
        "correlation_tracking": Setting("bool", True),
        "handlers": Setting("strlist", [], env="POET_HANDLERS"),
    },
    "event_schemas": {
        "validation": Setting("bool", True, env="POET_VALIDATION"),
        "version": Setting("str", "1.0", pattern=VERSION_PATTERN),
        "paths": Setting("pathlist", [], env="POET_SCHEMA_PATH"),
    },
    "daemon": {
        "workers": Setting("int", 4, 1, 256),
        "once": Setting("bool", False),
        "rescan_interval": Setting("float", 5.0, 0.05, _DAY),
        "heartbeat_interval": Setting("float", 2.0, 0.05, _DAY),
        "health_interval": Setting("float", 60.0, 0.05, _DAY),
        "lease_seconds": Setting("float", 30.0, 0.1, _DAY),
        "max_attempts": Setting("int", 5, 1, 1_000_000),
        "backoff_base": Setting("float", 1.0, 0.0, _DAY),
        "backoff_cap": Setting("float", 60.0, 0.0, _DAY),
        "window": Setting("int", 100_000, 1, _BIG),
        "max_inflight": Setting("int", 4096, 1, _BIG),
        "partition_key": Setting("partition_key", ["payload.function_name", "correlation_id", "type"]),
        "watch": Setting("bool", True),
        "index": Setting("bool", True),
        "mover_backlog": Setting("int", 1024, -1, _BIG),
        "max_causation_depth": Setting("int", 64, 0, 1_000_000),  # 0: no follow-ups (schemas.MAX_CAUSATION_DEPTH)
    },
    "learning": {
        "window_days": Setting("float", 30.0, 0.001, 36500),
        "min_samples": Setting("int", 5, 1, _BIG),
        "fp_rate_threshold": Setting("float", 0.5, 0.0, 1.0),
        "seasonal_concentration": Setting("float", 0.6, 0.0, 1.0),
        "low_score_threshold": Setting("float", 0.5, 0.0, 1.0),
        "min_edge_cases": Setting("int", 2, 1, _BIG),
        "max_detections_per_function": Setting("int", 5000, 1, _BIG),
    },
    "builtin_handlers": {
        name: Setting("bool", True)
        for name in (
            "drift_detected",
            "human_validation",
            "model_retrained",
            "performance_degraded",
            "alert_resolved",
            "mlflow_validation",
            "function_state",
        )
    },
    "status": {
        "warn_lag": Setting("duration", "1m"),
        "max_lag": Setting("duration", "5m"),
        "max_dead": Setting("int", 0, 0, _BIG),
        "max_corrupt": Setting("int", 0, 0, _BIG),
        "max_stale": Setting("int", 0, 0, _BIG),
        "min_daemons": Setting("int", 0, 0, _BIG),
    },
}


_NAME = r"[A-Za-z0-9_-]{1,64}"

# [nats]: checked like a section, kept in Config.nats (read by poetctl.backends.nats.settings).
# Secrets (password, token, nkey_seed) are "env:NAME" or the path of a file holding them - never the
# secret itself, so a poet.toml can be shown and committed.
NATS: dict[str, Setting] = {
    "servers": Setting("strlist", ["nats://127.0.0.1:4222"]),
    "user": Setting("str", None, 1, 256),
    "password": Setting("str", None, 1, 4096),
    "token": Setting("str", None, 1, 4096),
    "nkey_seed": Setting("str", None, 1, 4096),
    "creds_file": Setting("path", None),
    "tls_ca": Setting("path", None),
    "tls_cert": Setting("path", None),
    "tls_key": Setting("path", None),
    "stream": Setting("str", "POET", pattern=_NAME),
    "dead_stream": Setting("str", "POET_DEAD", pattern=_NAME),
    "corrupt_stream": Setting("str", "POET_CORRUPT", pattern=_NAME),
    "bucket_prefix": Setting("str", "POET", pattern=_NAME),
    "replicas": Setting("int", 1, 1, 5),
    "max_age": Setting("duration", "30d"),
    "duplicate_window": Setting("duration", "2m"),
    "partitions": Setting("int", 16, 1, 1024),
    "ack_wait": Setting("float", 30.0, 0.5, _DAY),
    "lease_ttl": Setting("float", 6.0, 1.0, _DAY),
    "connect_timeout": Setting("float", 5.0, 0.1, 600.0),
}


def bounds(section: str, key: str) -> dict[str, Any]:
    """typer ``min``/``max`` keyword arguments for the option that sets ``[section] key``."""
    s = SECTIONS[section][key]
    out: dict[str, Any] = {}
    cast = int if s.kind == "int" else float
    if s.lo is not None:
        out["min"] = cast(s.lo)
    if s.hi is not None:
        out["max"] = cast(s.hi)
    return out


def defaults(section: str) -> dict[str, Any]:
    """Every key of ``section`` with its default (fresh lists)."""
    return {k: list(s.default) if isinstance(s.default, list) else s.default for k, s in SECTIONS[section].items()}


def label(section: str, key: str) -> str:
    """How errors name a key: ``[daemon] workers``, or ``storage_path`` at the top level."""
    key = safe_key(key)
    return f"[{section}] {key}" if section else key


def safe_key(key: str) -> str:
    """A key as written in an error: quoted and escaped if it holds anything unprintable (TOML allows it)."""
    return key if key.isprintable() and key.strip() == key and key else repr(key)


def shown(value: Any) -> str:
    """A bad value quoted for a one-line error (escaped, shortened)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def check_section(section: str, table: Mapping[str, Any], where: str, text: str | None = None) -> dict[str, Any]:
    """Check one table (``section`` "" is the top level, without its sub-tables); return it normalised.

    ``where`` names the file (or ``[daemon]`` for library callers); ``text``,
    the file's content, lets errors name the line.
    """
    spec = SECTIONS[section]
    out: dict[str, Any] = {}
    for key, value in table.items():
        setting = spec.get(key)
        if setting is None:
            raise ConfigError(
                f"unknown key {label(section, key)}{_suggest(key, spec)}; known keys: {', '.join(spec)}",
                where=locate(where, text, section, key),
            )
        try:
            out[key] = setting.check(value)
        except ValueError:
            raise ConfigError(
                f"{label(section, key)} = {shown(value)}: expected {setting.expected()}",
                where=locate(where, text, section, key),
            ) from None
    if section == "daemon":
        _check_daemon(out, where, text)
    return out


def _check_daemon(table: Mapping[str, Any], where: str, text: str | None) -> None:
    # A heartbeat as old as the lease makes a live daemon look dead: others would take its events.
    d = SECTIONS["daemon"]
    beat = table.get("heartbeat_interval", d["heartbeat_interval"].default)
    lease = table.get("lease_seconds", d["lease_seconds"].default)
    if lease <= beat:
        key = "lease_seconds" if "lease_seconds" in table else "heartbeat_interval"
        raise ConfigError(
            f"[daemon] lease_seconds ({_num(lease)}) must be greater than heartbeat_interval ({_num(beat)})",
            where=locate(where, text, "daemon", key),
        )


def check_free_form(section: str, value: Any, where: str, text: str | None = None) -> dict[str, Any]:
    """``[nats]`` (a table) or ``[external_integrations]`` (a table of tables, ``enabled`` a boolean)."""
    if not isinstance(value, dict):
        raise ConfigError(f"[{section}] must be a table", where=locate(where, text, section, None))
    if section == "nats":
        return _check_nats(value, where, text)
    if section == "external_integrations":
        for raw_name, table in value.items():
            name = safe_key(raw_name)
            if not isinstance(table, dict):
                raise ConfigError(
                    f"[external_integrations] {name} = {shown(table)}: expected a table [external_integrations.{name}]",
                    where=locate(where, text, section, raw_name),
                )
            if "enabled" in table and not isinstance(table["enabled"], bool):
                raise ConfigError(
                    f"[external_integrations.{name}] enabled = {shown(table['enabled'])}: expected true or false",
                    where=locate(where, text, f"{section}.{raw_name}", "enabled"),
                )
    return value


def _check_nats(table: Mapping[str, Any], where: str, text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        setting = NATS.get(key)
        if setting is None:
            raise ConfigError(
                f"unknown key [nats] {safe_key(key)}{_suggest(key, NATS)}; known keys: {', '.join(NATS)}",
                where=locate(where, text, "nats", key),
            )
        try:
            out[key] = setting.check(value)
        except ValueError:
            raise ConfigError(
                f"[nats] {safe_key(key)} = {_shown_nats(key, value)}: expected {setting.expected()}",
                where=locate(where, text, "nats", key),
            ) from None
    return out


def _shown_nats(key: str, value: Any) -> str:
    # A wrong-typed secret is still a secret: never echo it.
    return "<hidden>" if key in ("password", "token", "nkey_seed") else shown(value)


def _suggest(key: str, spec: Mapping[str, Setting]) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(key, list(spec), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def locate(path: str, text: str | None, section: str, key: str | None) -> str:
    """``path:line`` of ``key`` in ``[section]`` when it can be found in ``text`` (best effort), else ``path``."""
    if text is None:
        return path
    current = ""
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    want = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=") if key is not None else None
    for n, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = m[1].strip()
            if want is None and current == section:
                return f"{path}:{n}"
            continue
        if want is not None and current == section and want.match(line):
            return f"{path}:{n}"
    return path
