"""Handler module for the drain benchmarks: one no-op handler subscribed to every type.

Used as ``poetctl daemon --handlers bench/_noop_handlers.py`` by bench/consume.py
and bench/memory.py.
"""

from __future__ import annotations

from typing import Any


def _noop(event: Any) -> None:
    return None


def register(router: Any) -> None:
    router.subscribe("*", _noop, name="noop")
