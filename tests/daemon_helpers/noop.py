"""Test handler module: a handler for every event type that does nothing."""

from __future__ import annotations

from typing import Any


def _noop(event: Any) -> None:
    return None


def register(router: Any) -> None:
    # Only the types the tests emit; other types stay unsubscribed on purpose
    # (an event nobody subscribes to goes straight to processed/).
    for pattern in ("system.metrics", "function.*", "drift.detected"):
        router.subscribe(pattern, _noop, name="noop")
