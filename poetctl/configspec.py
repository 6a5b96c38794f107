"""What poet.toml may say: every key, its type, its allowed range and its default.

One hand-written table (:data:`SECTIONS`) is the single source of truth for
the file, for the ``POET_*`` variables that override a key, and for the
command-line options that set one (their typer ``min``/``max`` come from
:func:`bounds`). It is plain data on purpose: ``load_config`` runs at every
command's start-up, so checking a file must not import a schema library.

Unknown keys are refused (a typo silently ignored is worse than an error),
except inside the free-form table ``[nats]`` and integration tables of a kind
poetctl does not know. ``[external_integrations.<name>]`` (alias
``[integrations.<name>]``) tables of a known kind (:data:`INTEGRATION_KEYS`:
the table's name, or its ``type`` key) have their keys checked here too;
their required keys only when ``enabled = true``.
Every failure is a :class:`~poetctl.errors.ConfigError` (exit 78) naming
the file (and line when it can be found), the key, and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .configkinds import _BIG as _BIG
from .configkinds import _DAY as _DAY
from .configkinds import DELIVERY_MODES as DELIVERY_MODES
from .configkinds import FREE_FORM as FREE_FORM
from .configkinds import MAX_SHOWN as MAX_SHOWN
from .configkinds import PARTITION_FIELDS as PARTITION_FIELDS
from .configkinds import VERSION_PATTERN as VERSION_PATTERN
from .configkinds import Setting as Setting
from .configkinds import _num as _num
from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
        "priority_shares": Setting("shares", {"high": 70, "normal": 25, "low": 5}),
    },
    # Backpressure and throttling (poetctl/limits.py): 0 means no limit.
    "limits": {
        "max_pending": Setting("int", 0, 0, _BIG),
        "max_pending_bytes": Setting("int", 0, 0, 1 << 50),  # bytes: up to a petabyte
        "sources": Setting("rates", {}),
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
    # `poetctl serve` (poetctl/serve/settings.py reads these; the secrets are resolved there).
    "serve": {
        "host": Setting("str", "127.0.0.1", 1, 255),
        "port": Setting("int", 8470, 0, 65535),
        "token": Setting("secrets", []),
        "feedback_secret": Setting("secrets", []),
        "pagerduty_secret": Setting("secrets", []),
        "public_url": Setting("str", "", 0, 2048),
        # Signed feedback links (the alert integrations sign with the first feedback_secret, on public_url).
        "feedback_ttl": Setting("duration", "7d"),
        "max_body_bytes": Setting("int", 16 * 1024 * 1024, 256, 1024 * 1024 * 1024),
        "rate_limit": Setting("float", 20.0, 0.0, 1_000_000),
        "rate_burst": Setting("int", 40, 1, 1_000_000),
        "body_timeout": Setting("float", 30.0, 0.1, 3600),
        "keepalive_timeout": Setting("float", 5.0, 0.1, 3600),
        "max_connections": Setting("int", 200, 1, 100_000),
    },
    "status": {
        "warn_lag": Setting("duration", "1m"),
        "max_lag": Setting("duration", "5m"),
        "max_dead": Setting("int", 0, 0, _BIG),
        "max_corrupt": Setting("int", 0, 0, _BIG),
        "max_stale": Setting("int", 0, 0, _BIG),
        "min_daemons": Setting("int", 0, 0, _BIG),
    },
    # Alerts on the system itself (poetctl.observability.alerts.AlertSettings has the same defaults).
    "alerts": {
        "enabled": Setting("bool", True),
        "interval": Setting("duration", 15.0),
        "for_seconds": Setting("duration", 60.0),
        "clear_seconds": Setting("duration", 60.0),
        "min_daemons": Setting("int", 1, 0, _BIG),
        "warn_lag": Setting("duration", 60.0),
        "max_lag": Setting("duration", 300.0),
        "lag_window": Setting("duration", 300.0),
        "disk_min_free": Setting("float", 0.10, 0.0, 1.0),
        "error_rate": Setting("float", 0.10, 0.0, 1.0),
        "min_runs": Setting("int", 20, 1, _BIG),
        "latency_factor": Setting("float", 3.0, 1.0, 1000.0),
        "latency_min_seconds": Setting("float", 0.1, 0.0, _DAY),
        "max_rss_mb": Setting("float", 0.0, 0.0, 1e9),
        "max_open_files_ratio": Setting("float", 0.8, 0.0, 1.0),
    },
}


# Keys every integration table may have (timeouts and circuit breaker of its endpoint).
_COMMON = {
    "enabled": Setting("bool", False),
    "type": Setting("choice", None, choices=("pagerduty", "slack", "webhook", "mlflow")),
    "connect_timeout": Setting("float", 5.0, 0.01, 300),
    "read_timeout": Setting("float", 15.0, 0.01, 300),
    "breaker_failures": Setting("int", 5, 1, 1000),
    "breaker_cooldown": Setting("float", 30.0, 0.0, _DAY),
}
# kind -> key -> Setting; REQUIRED_KEYS lists what an enabled integration must set.
INTEGRATION_KEYS: dict[str, dict[str, Setting]] = {
    "pagerduty": {
        **_COMMON,
        "routing_key": Setting("secret", None),
        "api_key": Setting("secret", None),  # the seed's name for the routing (integration) key
        "url": Setting("url", "https://events.pagerduty.com/v2/enqueue"),
        "source": Setting("str", None, 1, 255),  # PagerDuty payload.source; default: the model name
        "client": Setting("str", "poetctl", 1, 255),
    },
    "slack": {
        **_COMMON,
        "webhook_url": Setting("secret", None),
        "channel": Setting("str", None, 1, 80),  # legacy incoming webhooks only
        "types": Setting("strlist", ["alert.create_external"]),
    },
    "webhook": {
        **_COMMON,
        "url": Setting("url", None),
        "secrets": Setting("secretlist", None),
        "types": Setting("strlist", []),
        "topics": Setting("strlist", []),
    },
    "mlflow": {
        **_COMMON,
        "tracking_uri": Setting("url", None),
        "token": Setting("secret", None),
        "experiment_ids": Setting("strlist", []),
        "confidence": Setting("float", 0.8, 0.0, 1.0),
        "tag_runs": Setting("bool", True),
        "max_results": Setting("int", 500, 1, 1000),
    },
}
# What moved to [serve] (the page's server owns the feedback links and the inbound webhook secrets):
# an old table or key gets one line saying where it went, not "unknown key".
MOVED_TO_SERVE = {
    "feedback": "feedback links are configured in [serve]: public_url, feedback_secret, feedback_ttl",
    "webhook_secrets": "PagerDuty webhook secrets are configured in [serve] pagerduty_secret",
}
REQUIRED_KEYS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "pagerduty": (("routing_key", "api_key"),),
    "slack": ("webhook_url",),
    "webhook": ("url", "secrets"),
    "mlflow": ("tracking_uri",),
}


def integration_kind(name: str, table: Mapping[str, Any]) -> str | None:
    """The kind of integration table ``name``: its ``type``, else its name if that is a kind, else None."""
    t = table.get("type")
    if isinstance(t, str):
        return t
    return name if name in INTEGRATION_KEYS else None


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
    "ack_wait": Setting("float", 3.0, 0.5, _DAY),
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
    return {
        k: type(s.default)(s.default) if isinstance(s.default, list | dict) else s.default
        for k, s in SECTIONS[section].items()
    }


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
            # A secret written into the file by mistake must not be echoed to a terminal or a log.
            bad = "<a value, not shown>" if setting.kind == "secrets" else shown(value)
            raise ConfigError(
                f"{label(section, key)} = {bad}: expected {setting.expected()}",
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
    """``[nats]`` (a table) or ``[external_integrations]`` (a table of tables, ``enabled`` a boolean).

    ``section`` is the name the file used (``integrations`` is an alias of
    ``external_integrations``). Integration tables of a known kind are checked
    key by key (:data:`INTEGRATION_KEYS`); the values are kept as written.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"[{section}] must be a table", where=locate(where, text, section, None))
    if section == "nats":
        return _check_nats(value, where, text)
    if section in ("external_integrations", "integrations"):
        for raw_name, table in value.items():
            name = safe_key(raw_name)
            if not isinstance(table, dict):
                raise ConfigError(
                    f"[{section}] {name} = {shown(table)}: expected a table [{section}.{name}]",
                    where=locate(where, text, section, raw_name),
                )
            if "enabled" in table and not isinstance(table["enabled"], bool):
                raise ConfigError(
                    f"[{section}.{name}] enabled = {shown(table['enabled'])}: expected true or false",
                    where=locate(where, text, f"{section}.{raw_name}", "enabled"),
                )
            _check_integration(f"{section}.{raw_name}", name, table, where, text)
    return value


def _check_integration(tname: str, name: str, table: Mapping[str, Any], where: str, text: str | None) -> None:
    label_ = f"[{tname.split('.', 1)[0]}.{name}]"
    if table.get("type", name) == "feedback":
        raise ConfigError(f"{label_}: {MOVED_TO_SERVE['feedback']}", where=locate(where, text, tname, None))
    if "type" in table:
        t = _COMMON["type"]
        if table["type"] not in t.choices:
            raise ConfigError(
                f"{label_} type = {shown(table['type'])}: expected {t.expected()}",
                where=locate(where, text, tname, "type"),
            )
    kind = integration_kind(name, table)
    if kind is None:
        return  # not ours: kept free-form for other integrations
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
        # The name becomes a handler name and a file name under run/breakers/.
        raise ConfigError(
            f"{label_}: an integration name is 1-64 letters, digits, '_' or '-'",
            where=locate(where, text, tname, None),
        )
    spec = INTEGRATION_KEYS[kind]
    for key, v in table.items():
        setting = spec.get(key)
        if setting is None and kind == "pagerduty" and key == "webhook_secrets":
            raise ConfigError(f"{label_} webhook_secrets: {MOVED_TO_SERVE[key]}", where=locate(where, text, tname, key))
        if setting is None:
            raise ConfigError(
                f"unknown key {label_} {safe_key(key)}{_suggest(key, spec)}; {kind} keys: {', '.join(spec)}",
                where=locate(where, text, tname, key),
            )
        try:
            setting.check(v)
        except ValueError:
            raise ConfigError(
                f"{label_} {safe_key(key)} = {shown(v)}: expected {setting.expected()}",
                where=locate(where, text, tname, key),
            ) from None
    if table.get("enabled", spec["enabled"].default):
        for req in REQUIRED_KEYS[kind]:
            names = (req,) if isinstance(req, str) else req
            if not any(n in table for n in names):
                raise ConfigError(
                    f"{label_} is enabled but sets no {' or '.join(names)} (a {kind} integration needs it)",
                    where=locate(where, text, tname, None),
                )


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
