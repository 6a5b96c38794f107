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
from pathlib import Path

from .configspec import DELIVERY_MODES as DELIVERY_MODES
from .configspec import FREE_FORM, SECTIONS, check_free_form, check_section, defaults, locate, shown
from .errors import ConfigError, InputMissing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SPOOL = Path(".poet/pubsub")
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024  # a poet.toml is a few hundred bytes; refuse to slurp a huge or endless file
# Sections whose keys are checked one by one against configspec.SECTIONS (the top level is "").
TABLES = ("event_schemas", "daemon", "learning", "builtin_handlers", "status", "serve", "alerts", "limits")
# [daemon] max_causation_depth: how deep a chain of handler follow-ups may go (see EventRouter.build).
DEFAULT_MAX_CAUSATION_DEPTH = 64

# Keys whose literal values are treated as secrets when printed.
_SECRET_HINTS = ("key", "token", "secret", "password", "webhook_url", "routing")


_NEW: Any = object()  # the default of a list or dict field: a new one per Config
CONFIG_FIELDS = (
    "spool",
    "environment",
    "service",
    "source",
    "delivery_mode",
    "max_event_bytes",
    "persistence_enabled",
    "correlation_tracking",
    "validation",
    "schema_version",
    "schema_paths",
    "handlers",
    "integrations",
    "daemon",
    "nats",
    "learning",
    "builtin_handlers",
    "status",
    "serve",
    "alerts",
    "limits",
    "file",
    "origins",
)


class Config:
    """The effective configuration. Construct with :func:`load_config`.

    Written out rather than a dataclass (same constructor, repr and equality):
    every command loads a Config, and importing dataclasses (inspect, ast, dis)
    costs more than ``tail -n 10`` does.
    """

    __slots__ = CONFIG_FIELDS
    __hash__ = None  # type: ignore[assignment]  # compared by value, mutable (as the dataclass was)

    def __init__(
        self,
        spool: Path = DEFAULT_SPOOL,
        environment: str = "dev",
        service: str = "poet",
        source: str = "poet",
        delivery_mode: str = "local_only",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        persistence_enabled: bool = True,
        correlation_tracking: bool = True,
        validation: bool = True,
        schema_version: str = "1.0",
        schema_paths: list[Path] = _NEW,
        handlers: list[str] = _NEW,
        integrations: dict[str, Any] = _NEW,
        daemon: dict[str, Any] = _NEW,
        nats: dict[str, Any] = _NEW,
        learning: dict[str, Any] = _NEW,
        builtin_handlers: dict[str, Any] = _NEW,
        status: dict[str, Any] = _NEW,
        serve: dict[str, Any] = _NEW,
        alerts: dict[str, Any] = _NEW,
        limits: dict[str, Any] = _NEW,
        file: Path | None = None,
        origins: dict[str, str] = _NEW,
    ) -> None:
        self.spool = spool
        self.environment = environment
        self.service = service
        self.source = source
        self.delivery_mode = delivery_mode
        self.max_event_bytes = max_event_bytes
        self.persistence_enabled = persistence_enabled
        self.correlation_tracking = correlation_tracking
        self.validation = validation
        self.schema_version = schema_version
        self.schema_paths = [] if schema_paths is _NEW else schema_paths
        self.handlers = [] if handlers is _NEW else handlers
        self.integrations = {} if integrations is _NEW else integrations
        self.daemon = {} if daemon is _NEW else daemon
        self.nats = {} if nats is _NEW else nats
        self.learning = {} if learning is _NEW else learning
        self.builtin_handlers = {} if builtin_handlers is _NEW else builtin_handlers
        self.status = {} if status is _NEW else status
        self.serve = {} if serve is _NEW else serve
        self.alerts = {} if alerts is _NEW else alerts
        self.limits = {} if limits is _NEW else limits
        self.file = file
        self.origins = {} if origins is _NEW else origins

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in CONFIG_FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in CONFIG_FIELDS)
        return f"{self.__class__.__qualname__}({inner})"

    def redacted(self) -> dict[str, Any]:
        """JSON-ready view for ``config show``: every effective setting, defaults filled in.

        Secrets appear only as ``env:NAME``. ``origins`` says, for every
        setting, where its value came from: ``default``, ``file`` (the
        ``config_file``), the ``POET_*`` variable, or ``--spool``.
        """
        sections = {
            name: {**defaults(name), **getattr(self, name)}
            for name in ("daemon", "learning", "builtin_handlers", "status", "serve", "alerts", "limits")
        }
        origins = {"config_file": self.origins.get("config_file", "default")}
        for section, spec in SECTIONS.items():
            for key in spec:
                dotted = f"{section}.{key}" if section else key
                origins[dotted] = self.origins.get(dotted, "default")
        for section in FREE_FORM:
            origins[section] = self.origins.get(section, "default")
        return {
            "config_file": str(self.file) if self.file else None,
            "storage_path": str(self.spool),
            "environment": self.environment,
            "service": self.service,
            "source": self.source,
            "delivery_mode": self.delivery_mode,
            "max_event_bytes": self.max_event_bytes,
            "persistence_enabled": self.persistence_enabled,
            "correlation_tracking": self.correlation_tracking,
            "handlers": list(self.handlers),
            "event_schemas": {
                "validation": self.validation,
                "version": self.schema_version,
                "paths": [str(p) for p in self.schema_paths],
            },
            "external_integrations": _redact(self.integrations),
            "daemon": {k: list(v) if isinstance(v, tuple) else v for k, v in sections["daemon"].items()},
            "nats": _redact(self.nats),
            "learning": sections["learning"],
            "builtin_handlers": sections["builtin_handlers"],
            "status": sections["status"],
            "serve": _redact(sections["serve"]),
            "alerts": sections["alerts"],
            "limits": sections["limits"],
            "origins": origins,
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
        if value.startswith("file:") and any(h in key.lower() for h in _SECRET_HINTS):
            return value  # where the secret is, not the secret
        if any(h in key.lower() for h in _SECRET_HINTS):
            return "<redacted: use env:NAME>"
    return value


def resolve_secret(value: str | None, base: str | os.PathLike[str] | None = None) -> str | None:
    """Resolve ``env:NAME`` (None if unset) or ``file:PATH`` (its text, stripped; None if unreadable).

    A relative PATH is taken relative to ``base`` (poet.toml's directory, like
    the file's other paths) when given. Literals pass through.
    """
    if value is None:
        return None
    if value.startswith("env:"):
        return os.environ.get(value[4:]) or None
    if value.startswith("file:"):
        try:
            path = os.path.expanduser(value[5:])
            if base is not None and not os.path.isabs(path):
                path = os.path.join(base, path)
            with open(path, encoding="utf-8") as fh:
                return fh.read(64 * 1024).strip() or None
        except (OSError, UnicodeDecodeError):
            return None
    return value


def _find_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str], cfg: Config) -> Path | None:
    # exists(), not is_file(): `--config <(...)` (a pipe) is fine, and a directory or device
    # named as the config is reported by _read_toml (78), not called missing.
    if explicit:
        p = Path(explicit)
        if not p.exists():
            raise InputMissing(f"config file {p} does not exist", where="--config")
        cfg.origins["config_file"] = "--config"
        return p
    if env.get("POET_CONFIG"):
        p = Path(env["POET_CONFIG"])
        if not p.exists():
            raise InputMissing(f"config file {p} does not exist", where="POET_CONFIG")
        cfg.origins["config_file"] = "POET_CONFIG"
        return p
    p = Path("poet.toml")
    if not p.exists():
        return None
    cfg.origins["config_file"] = "./poet.toml"
    return p


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective :class:`Config`: defaults, then the file, then ``POET_*``, then ``spool``.

    Raises :class:`InputMissing` for a named config file that does not exist
    and :class:`ConfigError` (exit 78; naming the file, line and key, and what
    is allowed) for a file or variable that is unreadable or invalid.
    """
    env = os.environ if env is None else env
    cfg = Config()
    path = _find_file(config_file, env, cfg)
    if path is not None:
        cfg.file = path
        _apply_file(cfg, path)
    _apply_env(cfg, env)
    if spool is not None:
        cfg.spool = Path(spool)
        cfg.origins["storage_path"] = "--spool"
    return cfg


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    import tomllib  # only when a config file exists: it costs ~10 ms of start-up

    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", where=str(path)) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file larger than {MAX_CONFIG_BYTES} bytes", where=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("invalid TOML: not UTF-8", where=f"{path}:{line}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        import re

        msg = str(exc)
        m = re.search(r" \(at line (\d+), column (\d+)\)$", msg)
        if m:
            raise ConfigError(f"invalid TOML: {msg[: m.start()]} (column {m[2]})", where=f"{path}:{m[1]}") from None
        raise ConfigError(f"invalid TOML: {msg}", where=str(path)) from None
    except RecursionError:
        raise ConfigError("invalid TOML: nested too deeply", where=str(path)) from None


def _apply_file(cfg: Config, path: Path) -> None:
    data, text = _read_toml(path)
    base = path.parent
    where = str(path)
    for key, value in data.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{key} = {shown(value)}: expected a table [{key}]", where=locate(where, text, "", key)
                )
            table = check_section(key, value, where, text)
            if key == "event_schemas":
                _set(cfg, "event_schemas", table, "file", base)
            else:
                getattr(cfg, key).update(table)
                cfg.origins.update({f"{key}.{k}": "file" for k in table})
        elif key in FREE_FORM or key == "integrations":
            # [integrations.*] (issue 12's name) is an alias of the seed's [external_integrations.*].
            if key == "integrations" and "external_integrations" in data:
                raise ConfigError(
                    "[integrations] and [external_integrations] are the same table: use one",
                    where=locate(where, text, key, None),
                )
            attr = "integrations" if key in ("external_integrations", "integrations") else key
            setattr(cfg, attr, check_free_form(key, value, where, text))
            cfg.origins["external_integrations" if attr == "integrations" else key] = "file"
        else:
            _set(cfg, "", check_section("", {key: value}, where, text), "file", base)


def _set(cfg: Config, section: str, table: Mapping[str, Any], origin: str, base: Path | None) -> None:
    """Store checked values of the top level or ``[event_schemas]`` in ``cfg``."""
    for key, value in table.items():
        if key == "storage_path":
            cfg.spool = _resolve(Path(value), base)
        elif key == "paths":
            cfg.schema_paths = [_resolve(Path(p), base) for p in value]
        elif key == "validation":
            cfg.validation = value
        elif key == "version":
            cfg.schema_version = value
        else:
            setattr(cfg, key, value)
        cfg.origins[f"{section}.{key}" if section else key] = origin


def _resolve(p: Path, base: Path | None) -> Path:
    return p if base is None or p.is_absolute() else base / p


def _apply_env(cfg: Config, env: Mapping[str, str]) -> None:
    """``POET_*`` overrides: the same keys and ranges as the file (an empty variable counts as unset)."""
    for section in ("", "event_schemas"):
        for key, setting in SECTIONS[section].items():
            name = setting.env
            text = env.get(name) if name else None
            if not name or not text:
                continue
            try:
                value = setting.parse_env(text)
            except ValueError:
                raise ConfigError(f"{name}={shown(text)}: expected {setting.expected()} ({key})") from None
            _set(cfg, section, {key: value}, name, None)
