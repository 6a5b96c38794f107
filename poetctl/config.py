"""Configuration: ``poet.toml`` plus ``POET_*`` environment overrides.

Lookup order for the file: ``--config``, then ``POET_CONFIG``, then
``./poet.toml`` (absent is fine). Spool location: ``--spool``, then
``POET_SPOOL``, then ``storage_path`` in the file, then ``./.poet/pubsub``.
Relative paths in the file are relative to the file's directory.

Secrets are written as ``env:NAME`` and resolved only when an integration
needs them (:func:`resolve_secret`); :meth:`Config.redacted` never contains a
secret value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputMissing, InvalidData

DEFAULT_SPOOL = Path(".poet/pubsub")
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
# [daemon] max_causation_depth: how deep a chain of handler follow-ups may go (see EventRouter.build).
DEFAULT_MAX_CAUSATION_DEPTH = 64
DELIVERY_MODES = ("local_only", "nats", "hybrid")

# Keys whose literal values are treated as secrets when printed.
_SECRET_HINTS = ("key", "token", "secret", "password", "webhook_url", "routing")

_TOP_KEYS = {
    "storage_path",
    "environment",
    "service",
    "source",
    "delivery_mode",
    "max_event_bytes",
    "persistence_enabled",
    "correlation_tracking",
    "handlers",
    "event_schemas",
    "external_integrations",
    "daemon",
    "nats",
    "learning",
    "builtin_handlers",
    "status",
}
_SCHEMA_KEYS = {"validation", "version", "paths"}


@dataclass(slots=True)
class Config:
    """The effective configuration. Construct with :func:`load_config`."""

    spool: Path = DEFAULT_SPOOL
    environment: str = "dev"
    service: str = "poet"
    source: str = "poet"
    delivery_mode: str = "local_only"
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    validation: bool = True
    schema_version: str = "1.0"
    schema_paths: list[Path] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    integrations: dict[str, Any] = field(default_factory=dict)
    daemon: dict[str, Any] = field(default_factory=dict)
    nats: dict[str, Any] = field(default_factory=dict)
    learning: dict[str, Any] = field(default_factory=dict)
    builtin_handlers: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None
    origins: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> dict[str, Any]:
        """JSON-ready view for ``config show``; secrets appear only as ``env:NAME``."""
        return {
            "config_file": str(self.file) if self.file else None,
            "storage_path": str(self.spool),
            "environment": self.environment,
            "service": self.service,
            "source": self.source,
            "delivery_mode": self.delivery_mode,
            "max_event_bytes": self.max_event_bytes,
            "handlers": list(self.handlers),
            "event_schemas": {
                "validation": self.validation,
                "version": self.schema_version,
                "paths": [str(p) for p in self.schema_paths],
            },
            "external_integrations": _redact(self.integrations),
            "daemon": _redact(self.daemon),
            "nats": _redact(self.nats),
            "learning": dict(self.learning),
            "builtin_handlers": dict(self.builtin_handlers),
            "status": dict(self.status),
            "origins": dict(self.origins),
        }


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str):
        if value.startswith("env:"):
            state = "set" if os.environ.get(value[4:]) else "unset"
            return f"{value} ({state})"
        if any(h in key.lower() for h in _SECRET_HINTS):
            return "<redacted: use env:NAME>"
    return value


def resolve_secret(value: str | None) -> str | None:
    """Resolve ``env:NAME`` to the variable's value (None if unset); literals pass through."""
    if value is None:
        return None
    if value.startswith("env:"):
        return os.environ.get(value[4:]) or None
    return value


def _as_bool(text: str, where: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise InvalidData(f"expected a boolean (true/false/1/0), got {text!r}", where=where)


def _find_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise InputMissing(f"config file {p} does not exist", where="--config")
        return p
    if env.get("POET_CONFIG"):
        p = Path(env["POET_CONFIG"])
        if not p.is_file():
            raise InputMissing(f"config file {p} does not exist", where="POET_CONFIG")
        return p
    p = Path("poet.toml")
    return p if p.is_file() else None


def _expect(value: Any, typ: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InvalidData(f"expected {what}, got {value!r}", where=where)
    return value


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective :class:`Config`.

    Raises :class:`InputMissing` for a named config file that does not exist and
    :class:`InvalidData` (naming the file and key) for a malformed one.
    """
    env = os.environ if env is None else env
    cfg = Config()
    path = _find_file(config_file, env)
    if path is not None:
        cfg.file = path
        _apply_file(cfg, path)
    _apply_env(cfg, env)
    if spool is not None:
        cfg.spool = Path(spool)
        cfg.origins["storage_path"] = "--spool"
    return cfg


def _apply_file(cfg: Config, path: Path) -> None:
    import tomllib  # only when a config file exists: it costs ~10 ms of start-up

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidData(f"invalid TOML: {exc}", where=str(path)) from None
    except OSError as exc:
        raise InputMissing(f"cannot read config file: {exc.strerror}", where=str(path)) from None
    base = path.parent
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise InvalidData(
            f"unknown key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}",
            where=str(path),
        )

    def where(key: str) -> str:
        return f"{path}: {key}"

    def origin(key: str) -> None:
        cfg.origins[key] = str(path)

    if "storage_path" in data:
        sp = Path(_expect(data["storage_path"], str, where("storage_path"), "a path string"))
        cfg.spool = sp if sp.is_absolute() else base / sp
        origin("storage_path")
    for key in ("environment", "service", "source"):
        if key in data:
            setattr(cfg, key, _expect(data[key], str, where(key), "a string"))
            origin(key)
    if "delivery_mode" in data:
        mode = _expect(data["delivery_mode"], str, where("delivery_mode"), "a string")
        if mode not in DELIVERY_MODES:
            raise InvalidData(f"expected one of {DELIVERY_MODES}, got {mode!r}", where=where("delivery_mode"))
        cfg.delivery_mode = mode
        origin("delivery_mode")
    if "max_event_bytes" in data:
        n = _expect(data["max_event_bytes"], int, where("max_event_bytes"), "an integer")
        if n < 256:
            raise InvalidData(f"expected at least 256, got {n}", where=where("max_event_bytes"))
        cfg.max_event_bytes = n
        origin("max_event_bytes")
    if "handlers" in data:
        hs = _expect(data["handlers"], list, where("handlers"), "a list of module names")
        cfg.handlers = [_expect(h, str, where("handlers"), "a module name") for h in hs]
        origin("handlers")
    es = data.get("event_schemas", {})
    _expect(es, dict, where("event_schemas"), "a table")
    bad = set(es) - _SCHEMA_KEYS
    if bad:
        raise InvalidData(
            f"unknown key(s) {sorted(bad)}; expected {sorted(_SCHEMA_KEYS)}", where=where("event_schemas")
        )
    if "validation" in es:
        cfg.validation = _expect(es["validation"], bool, where("event_schemas.validation"), "true or false")
        origin("event_schemas.validation")
    if "version" in es:
        cfg.schema_version = _expect(es["version"], str, where("event_schemas.version"), "a string")
    if "paths" in es:
        ps = _expect(es["paths"], list, where("event_schemas.paths"), "a list of directories")
        cfg.schema_paths = [_resolve(Path(_expect(x, str, where("event_schemas.paths"), "a path")), base) for x in ps]
        origin("event_schemas.paths")
    for table in ("external_integrations", "daemon", "nats", "learning", "builtin_handlers", "status"):
        if table in data:
            value = _expect(data[table], dict, where(table), "a table")
            setattr(cfg, "integrations" if table == "external_integrations" else table, value)
            origin(table)


def _resolve(p: Path, base: Path) -> Path:
    return p if p.is_absolute() else base / p


def _apply_env(cfg: Config, env: Mapping[str, str]) -> None:
    if env.get("POET_SPOOL"):
        cfg.spool = Path(env["POET_SPOOL"])
        cfg.origins["storage_path"] = "POET_SPOOL"
    for key in ("environment", "service", "source"):
        name = f"POET_{key.upper()}"
        if env.get(name):
            setattr(cfg, key, env[name])
            cfg.origins[key] = name
    if env.get("POET_SCHEMA_PATH"):
        cfg.schema_paths = [Path(p) for p in env["POET_SCHEMA_PATH"].split(os.pathsep) if p]
        cfg.origins["event_schemas.paths"] = "POET_SCHEMA_PATH"
    if env.get("POET_MAX_EVENT_BYTES"):
        try:
            cfg.max_event_bytes = int(env["POET_MAX_EVENT_BYTES"])
        except ValueError:
            raise InvalidData(
                f"expected an integer, got {env['POET_MAX_EVENT_BYTES']!r}", where="POET_MAX_EVENT_BYTES"
            ) from None
        cfg.origins["max_event_bytes"] = "POET_MAX_EVENT_BYTES"
    if env.get("POET_VALIDATION"):
        cfg.validation = _as_bool(env["POET_VALIDATION"], "POET_VALIDATION")
        cfg.origins["event_schemas.validation"] = "POET_VALIDATION"
    if env.get("POET_HANDLERS"):
        cfg.handlers = [h.strip() for h in env["POET_HANDLERS"].split(",") if h.strip()]
        cfg.origins["handlers"] = "POET_HANDLERS"
    if env.get("POET_DELIVERY_MODE"):
        mode = env["POET_DELIVERY_MODE"]
        if mode not in DELIVERY_MODES:
            raise InvalidData(f"expected one of {DELIVERY_MODES}, got {mode!r}", where="POET_DELIVERY_MODE")
        cfg.delivery_mode = mode
        cfg.origins["delivery_mode"] = "POET_DELIVERY_MODE"
