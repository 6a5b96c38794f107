"""Connection and layout settings for NATS: ``[nats]`` in poet.toml and ``POET_NATS_URL``.

Secrets (``password``, ``token``, ``nkey_seed``) are given as ``env:NAME``
or as the path of a file that holds them; they are resolved only when
connecting and never appear in ``repr``, errors, logs or events.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...configspec import NATS
from ...errors import ConfigError

SECRET_KEYS = ("password", "token", "nkey_seed")


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, int | float):
        return float(value)
    from ...errors import UsageError
    from ...ops.status import parse_duration

    try:
        return parse_duration(str(value), f"[nats] {key}")
    except UsageError as exc:
        raise ConfigError(exc.message) from None


@dataclass(frozen=True)
class NatsSettings:
    """Everything the NATS backend needs to know; build with :meth:`from_config`."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    stream: str = "POET"
    dead_stream: str = "POET_DEAD"
    corrupt_stream: str = "POET_CORRUPT"
    bucket_prefix: str = "POET"
    replicas: int = 1
    max_age: float = 30 * 86400.0
    duplicate_window: float = 120.0
    partitions: int = 16
    ack_wait: float = 3.0
    lease_ttl: float = 6.0
    connect_timeout: float = 5.0

    @classmethod
    def from_config(cls, table: Mapping[str, Any], env: Mapping[str, str] | None = None) -> NatsSettings:
        """From a checked ``[nats]`` table; ``POET_NATS_URL`` (comma-separated) replaces ``servers``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {k: s.default for k, s in NATS.items()}
        values.update(table)
        url = env.get("POET_NATS_URL", "").strip()
        if url:
            values["servers"] = [u.strip() for u in url.split(",") if u.strip()]
        if not values["servers"]:
            raise ConfigError("no NATS server: set [nats] servers or POET_NATS_URL (comma-separated)")
        values["servers"] = tuple(values["servers"])
        values["max_age"] = _seconds(values["max_age"], "max_age")
        values["duplicate_window"] = _seconds(values["duplicate_window"], "duplicate_window")
        return cls(**values)

    # -- names ----------------------------------------------------------------------------------
    @property
    def state_bucket(self) -> str:
        """KV: per event id, its state and handling record (completion records included)."""
        return f"{self.bucket_prefix}_STATE"

    @property
    def lease_bucket(self) -> str:
        """KV: partition leases and daemon membership, each entry expiring after ``lease_ttl``."""
        return f"{self.bucket_prefix}_LEASES"

    @property
    def function_bucket(self) -> str:
        """KV: function state (read by ``state show`` in nats mode)."""
        return f"{self.bucket_prefix}_FUNCTIONS"

    def durable(self, partition: int, lane: str = "") -> str:
        """The durable consumer of a partition's lane (``poet-p<n>``; ``poet-p<n>h`` high, ``poet-p<n>l`` low)."""
        return f"poet-p{partition}{lane}"

    # -- connecting -----------------------------------------------------------------------------
    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` with every secret resolved (never log this)."""
        opts: dict[str, Any] = {
            "servers": list(self.servers),
            "connect_timeout": self.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
        }
        if self.user:
            opts["user"] = self.user
        if self.password:
            opts["password"] = resolve(self.password, "password")
        if self.token:
            opts["token"] = resolve(self.token, "token")
        if self.nkey_seed:
            opts["nkeys_seed_str"] = resolve(self.nkey_seed, "nkey_seed")
        if self.creds_file:
            opts["user_credentials"] = self.creds_file
        if self.tls_ca or self.tls_cert:
            import ssl

            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            opts["tls"] = ctx
        return opts

    def shown_servers(self) -> str:
        """The servers without any user:password@ part (for messages)."""
        out = []
        for s in self.servers:
            scheme, sep, rest = s.partition("://")
            host = rest.rpartition("@")[2] if sep else s.rpartition("@")[2]
            out.append(f"{scheme}://{host}" if sep else host)
        return ",".join(out)


def resolve(ref: str, key: str) -> str:
    """``env:NAME`` -> the variable; anything else is the path of a file holding the secret.

    Errors name the key and the reference, never a value.
    """
    if ref.startswith("env:"):
        value = os.environ.get(ref[4:])
        if not value:
            raise ConfigError(f"[nats] {key} = {ref!r}: the variable is not set")
        return value
    try:
        with open(ref, encoding="utf-8") as fh:
            value = fh.read(65536).strip()
    except OSError as exc:
        raise ConfigError(
            f"[nats] {key}: cannot read the file {ref!r} ({exc.strerror}); expected env:NAME or a file path"
        ) from None
    if not value:
        raise ConfigError(f"[nats] {key}: the file {ref!r} is empty")
    return value


__all__ = ["SECRET_KEYS", "NatsSettings", "resolve"]
