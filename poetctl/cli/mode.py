"""Delivery mode: ``--mode``, else ``POET_MODE``, else ``delivery_mode`` in poet.toml (or ``POET_DELIVERY_MODE``).

``local_only`` (the spool, the default), ``nats`` (JetStream only) and
``hybrid`` (the spool as an outbox: emit commits to the spool as in
``local_only``; ``daemon`` also runs the forwarder to JetStream).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..configspec import DELIVERY_MODES
from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def resolve_mode(option: str | None, cfg: Any, env: Mapping[str, str] | None = None) -> str:
    """The one delivery mode this command runs in; UsageError for an unknown one."""
    env = os.environ if env is None else env
    if option:
        mode, where = option, "--mode"
    elif env.get("POET_MODE"):
        mode, where = env["POET_MODE"].strip(), "POET_MODE"
    else:
        mode, where = cfg.delivery_mode, "delivery_mode"
    if mode not in DELIVERY_MODES:
        raise UsageError(f"{where} {mode!r}: expected one of {', '.join(DELIVERY_MODES)}")
    return mode


def nats_transport(cfg: Any, **kwargs: Any) -> Any:
    """A connected :class:`~poetctl.backends.nats.transport.NatsTransport` from ``[nats]`` / ``POET_NATS_URL``."""
    from ..backends.nats.settings import NatsSettings
    from ..backends.nats.transport import NatsTransport

    if "key_of" not in kwargs:
        # [daemon] partition_key decides the partition: emit, dead retry and the daemon must agree on it.
        from ..partition import configured_key_function

        kwargs["key_of"] = configured_key_function(dict(cfg.daemon))
    from ..limits import Limits

    kwargs.setdefault("priority_shares", dict(cfg.daemon).get("priority_shares"))
    t = NatsTransport(NatsSettings.from_config(cfg.nats), **kwargs)
    t.limits = Limits.of(cfg)  # [limits]: what emit keeps (backends/nats/limits.py)
    return t


__all__ = ["nats_transport", "resolve_mode"]
