"""Built-in handlers (the seed's ML-monitoring handlers)."""

from __future__ import annotations

from ..router import EventRouter


def register_builtin(router: EventRouter) -> None:
    """Subscribe the built-in handlers that poet.toml leaves enabled."""
    return None
