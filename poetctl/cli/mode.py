"""Delivery mode: ``--mode``, else ``POET_MODE``, else ``delivery_mode`` in poet.toml (or ``POET_DELIVERY_MODE``).

``local_only`` (the spool, the default), ``nats`` (JetStream only) and
``hybrid`` (the spool as an outbox forwarded to JetStream; until its
forwarder lands it behaves as ``local_only`` and says so on stderr).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from ..configspec import DELIVERY_MODES
from ..errors import UsageError

HYBRID_NOTE = (
    "poetctl: note: hybrid mode forwards through the daemon's forwarder, which is not built yet; "
    "running as local_only\n"
)


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
    if mode == "hybrid":
        sys.stderr.write(HYBRID_NOTE)
        return "local_only"
    return mode


def nats_transport(cfg: Any, **kwargs: Any) -> Any:
    """A connected :class:`~poetctl.backends.nats.transport.NatsTransport` from ``[nats]`` / ``POET_NATS_URL``."""
    from ..backends.nats.settings import NatsSettings
    from ..backends.nats.transport import NatsTransport

    return NatsTransport(NatsSettings.from_config(cfg.nats), **kwargs)


__all__ = ["HYBRID_NOTE", "nats_transport", "resolve_mode"]
