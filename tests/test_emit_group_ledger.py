"""Single emits grouped by the committer: [limits] read per emit, the gauge and the key ledger once per group."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_backpressure import pending, setup

from poetctl.config import load_config
from poetctl.limits import Backpressure
from poetctl.router import EventRouter

HEALTH = {"service": "s", "status": "healthy"}


def test_limits_edited_in_place_after_an_emit_apply_to_the_next(tmp_path: Path) -> None:
    """[limits] changed in place (or replaced) after emits were admitted is honoured by the next emit."""
    config = load_config(setup(tmp_path, "max_pending = 1000"))
    router = EventRouter(config=config)
    router.emit("system.health", HEALTH, wait=0)
    router.emit("system.health", HEALTH, wait=0)  # a cached parse may not outlive the edit below
    config.limits["max_pending"] = 2
    with pytest.raises(Backpressure):
        router.emit("system.health", HEALTH, wait=0)
    config.limits["max_pending"] = 3
    router.emit("system.health", HEALTH, wait=0)
    config.limits = {"sources": {"system.*": "1/h"}, "max_pending": 100}
    router.emit("system.health", HEALTH, wait=0, source="system.a")
    config.limits["sources"]["system.*"] = "1/h"  # unchanged: still limited
    with pytest.raises(Backpressure):
        router.emit("system.health", HEALTH, wait=0, source="system.b")
    config.limits["sources"].clear()  # a nested table edited in place
    router.emit("system.health", HEALTH, wait=0, source="system.c")
    assert len(pending(tmp_path)) == 5
