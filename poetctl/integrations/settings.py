"""Integration settings from poet.toml: which integrations exist, their endpoints and secrets.

``[external_integrations.<name>]`` (alias ``[integrations.<name>]``) tables
were checked key by key at load (:func:`poetctl.configspec.check_free_form`);
here they become :class:`Integration` objects with every default filled in.
Secrets (``env:NAME``, ``file:PATH`` or a discouraged literal) are resolved
only by :meth:`Integration.secret`, when a handler is built: an enabled
integration whose secret is missing refuses to start (exit 78), naming the
key and where the value should come from, never the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, resolve_secret
from ..configspec import INTEGRATION_KEYS, integration_kind, safe_key
from ..errors import ConfigError


@dataclass(slots=True)
class Integration:
    """One configured integration: ``name`` (the table's), ``kind`` and its values with defaults filled in."""

    name: str
    kind: str
    enabled: bool
    values: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # poet.toml's directory: relative file: secrets are read from there

    @property
    def label(self) -> str:
        return f"[external_integrations.{safe_key(self.name)}]"

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def secret(self, key: str) -> str:
        """The resolved secret ``key``; ConfigError (78) naming where it should come from if it is missing."""
        return self._one(key, self.values.get(key))

    def secrets(self, key: str) -> list[str]:
        """Every resolved secret of list ``key`` (rotation: several may be active)."""
        raw = self.values.get(key)
        if isinstance(raw, list):
            return [self._one(key, v) for v in raw]
        return [self._one(key, raw)]

    def _one(self, key: str, ref: Any) -> str:
        if not isinstance(ref, str):
            raise ConfigError(f"{self.label} sets no {key}")
        value = resolve_secret(ref, self.base)
        if value is None:
            if ref.startswith("env:"):
                raise ConfigError(f"{self.label} {key} = {ref}: the environment variable {ref[4:]} is not set")
            raise ConfigError(f"{self.label} {key} = {ref}: the file cannot be read or is empty")
        return value

    def url(self, key: str) -> str:
        """A URL key (``env:NAME`` resolved), checked to be http(s)."""
        raw = self.values.get(key)
        value = self._one(key, raw) if isinstance(raw, str) and raw.startswith("env:") else raw
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise ConfigError(f"{self.label} {key}: expected an http:// or https:// URL")
        return value


def integrations(cfg: Config) -> list[Integration]:
    """Every integration table of a known kind, in file order (unknown kinds are someone else's)."""
    out: list[Integration] = []
    for name, table in cfg.integrations.items():
        if not isinstance(table, dict):
            continue
        kind = integration_kind(name, table)
        if kind is None:
            continue
        spec = INTEGRATION_KEYS[kind]
        values = {k: s.default for k, s in spec.items()}
        values.update(table)
        base = str(cfg.file.parent) if cfg.file is not None else None
        out.append(Integration(str(name), kind, bool(values["enabled"]), values, base))
    return out


def unknown_kinds(cfg: Config) -> list[str]:
    """Names of integration tables poetctl does not know (kept, never used)."""
    return [str(n) for n, t in cfg.integrations.items() if isinstance(t, dict) and integration_kind(n, t) is None]


@dataclass(frozen=True, slots=True)
class FeedbackLinks:
    """Where the feedback page lives and the secrets of its links (the first signs; all verify).

    One configuration, owned by the page's server: ``[serve] public_url``,
    ``feedback_secret`` and ``feedback_ttl``. ``poetctl serve`` verifies with
    the same secrets, resolved by the same rule
    (:func:`poetctl.serve.settings.resolve_refs`: ``env:NAME``, or ``file:PATH``
    relative to poet.toml).
    """

    base_url: str
    secrets: tuple[bytes, ...]
    ttl: float

    @classmethod
    def from_config(cls, cfg: Config, env: dict[str, str] | None = None) -> FeedbackLinks | None:
        """The configured links, or None when ``[serve] public_url`` is unset (alerts then carry the
        seed's relative path); ConfigError (78) when it is not a URL or no secret can be resolved."""
        from ..configspec import defaults
        from ..serve.settings import resolve_refs

        table = {**defaults("serve"), **cfg.serve}
        base = str(table["public_url"])
        if not base:
            return None
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"[serve] public_url = {base!r}: expected an http:// or https:// URL")
        refs = table["feedback_secret"]
        if not refs:
            raise ConfigError(
                "[serve] public_url is set but [serve] feedback_secret is not: the feedback links cannot be signed"
            )
        where = str(cfg.file.parent) if cfg.file is not None else None
        secrets = resolve_refs(refs, "feedback_secret", env, where)
        ttl = table["feedback_ttl"]
        if not isinstance(ttl, int | float):
            from ..ops.status import parse_duration

            ttl = parse_duration(str(ttl), "[serve] feedback_ttl")
        return cls(base, secrets.values, float(ttl))

    def url(self, event_id: str, *, now: float, answer: str | None = None) -> str:
        """The signed link to the feedback page of alert ``event_id`` (valid ``ttl`` from ``now``)."""
        from .links import feedback_url

        return feedback_url(self.base_url, event_id, secret=self.secrets[0], now=now, ttl=self.ttl, answer=answer)
