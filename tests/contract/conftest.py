"""The backend contract suite's fixtures: every test here runs once per backend (see kits.py).

Tests assert through the transport (``state_of``, ``get``, ``select``), never
through a backend's own storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.router import EventRouter
from poetctl.testing import FakeClock, Harness
from poetctl.transport import Outgoing, Transport

from .kits import KITS, START, Emit, Kit


@pytest.fixture(params=sorted(KITS))
def backend(request: pytest.FixtureRequest) -> Kit:
    """Each backend in turn."""
    kit: Kit = KITS[request.param]
    return kit


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when a test says so."""
    return FakeClock(START)


@pytest.fixture
def transport(backend: Kit, clock: FakeClock, tmp_path: Path) -> Iterator[Transport]:
    """A fresh transport of the backend on the fake clock."""
    t = backend.make(clock, tmp_path)
    yield t
    t.close()


@pytest.fixture
def make_harness(transport: Transport, clock: FakeClock) -> Callable[..., Harness]:
    """Build a router + steppable daemon on the backend's transport (keyword arguments go to Harness)."""

    def make(**kwargs: Any) -> Harness:
        kwargs.setdefault("max_attempts", 3)
        kwargs.setdefault("backoff_base", 1.0)
        kwargs.setdefault("backoff_cap", 4.0)
        return Harness(clock=clock, transport=transport, **kwargs)

    return make


@pytest.fixture
def make_event(transport: Transport) -> Emit:
    """Build a sealed ``system.health`` event keyed by ``key`` (its correlation id) as an Outgoing item."""
    router = EventRouter(transport=transport)

    def make(key: str = "k1", *, id: str | None = None, status: str = "healthy", **kw: Any) -> Outgoing:
        ev, keyed = router.build("system.health", {"service": "svc", "status": status}, correlation_id=key, id=id, **kw)
        return Outgoing(ev, ev.to_json() + b"\n", keyed)

    return make
