"""``[serve]`` from poet.toml, with its secrets resolved (``env:NAME`` or ``file:PATH``).

Secrets never leave this module as text that could be logged: tokens are kept
as bytes in :class:`Secrets`, whose ``repr`` shows only how many there are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..configspec import defaults
from ..errors import ConfigError

MAX_SECRET_FILE = 64 * 1024
FORM_MAX_BYTES = 64 * 1024  # a feedback form: a reason of a few thousand characters is plenty


class Secrets:
    """Active secrets of one kind (several at once, for rotation); the first one is the current."""

    __slots__ = ("_values",)

    def __init__(self, values: list[bytes]) -> None:
        self._values = tuple(v for v in values if v)

    @property
    def values(self) -> tuple[bytes, ...]:
        return self._values

    def __bool__(self) -> bool:
        return bool(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<{len(self._values)} secret(s)>"


def resolve_refs(refs: list[str], key: str, env: dict[str, str] | None = None, base: str | None = None) -> Secrets:
    """Load each ``env:NAME`` / ``file:PATH`` of ``[serve] key``; an unset variable or unreadable file is an error.

    A relative ``file:`` path is relative to ``base`` (the config file's directory), like every path in poet.toml.

    A missing secret must stop the server at start: running with fewer tokens
    than configured would silently lock clients out (or, for a webhook secret,
    refuse every delivery).
    """
    env = dict(os.environ) if env is None else env
    out: list[bytes] = []
    for ref in refs:
        if ref.startswith("env:"):
            value = env.get(ref[4:], "")
            if not value:
                raise ConfigError(f"[serve] {key}: environment variable {ref[4:]} is not set or empty")
            out.append(value.encode("utf-8"))
        else:
            path = ref[5:]
            if base is not None and not os.path.isabs(path):
                path = os.path.join(base, path)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.read(fd, MAX_SECRET_FILE + 1)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise ConfigError(f"[serve] {key}: cannot read secret file {path}: {exc.strerror}") from None
            data = data.strip()
            if not data or len(data) > MAX_SECRET_FILE:
                raise ConfigError(f"[serve] {key}: secret file {path} is empty or larger than {MAX_SECRET_FILE} bytes")
            out.append(data)
    return Secrets(out)


@dataclass(slots=True)
class ServeSettings:
    """Everything the app and the runner need; build with :meth:`from_config`."""

    host: str = "127.0.0.1"
    port: int = 8470
    tokens: Secrets = field(default_factory=lambda: Secrets([]))
    feedback_secrets: Secrets = field(default_factory=lambda: Secrets([]))
    pagerduty_secrets: Secrets = field(default_factory=lambda: Secrets([]))
    public_url: str = ""
    max_event_bytes: int = 1024 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    rate_limit: float = 20.0
    rate_burst: int = 40
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 200
    nats_servers: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Any, env: dict[str, str] | None = None) -> ServeSettings:
        table = {**defaults("serve"), **cfg.serve}
        base = str(cfg.file.parent) if cfg.file is not None else None
        nats: list[str] = []
        if cfg.delivery_mode != "local_only":
            raw = cfg.nats.get("servers", cfg.nats.get("url", "nats://127.0.0.1:4222"))
            nats = [raw] if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
        return cls(
            host=table["host"],
            port=table["port"],
            tokens=resolve_refs(table["token"], "token", env, base),
            feedback_secrets=resolve_refs(table["feedback_secret"], "feedback_secret", env, base),
            pagerduty_secrets=resolve_refs(table["pagerduty_secret"], "pagerduty_secret", env, base),
            public_url=table["public_url"],
            max_event_bytes=cfg.max_event_bytes,
            max_body_bytes=max(table["max_body_bytes"], cfg.max_event_bytes),
            rate_limit=table["rate_limit"],
            rate_burst=table["rate_burst"],
            body_timeout=table["body_timeout"],
            keepalive_timeout=table["keepalive_timeout"],
            max_connections=table["max_connections"],
            nats_servers=nats,
        )
