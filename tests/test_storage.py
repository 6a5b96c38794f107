"""The handlers' storage interface (poetctl.storage): handlers get their stores from the router, and the Harness
runs the built-in handlers in memory. The stores' shared promises are in tests/contract/test_contract_storage.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import load_samples

from poetctl import EventRouter
from poetctl.backends.fs.storage import FsStorage
from poetctl.backends.memory import MemoryTransport
from poetctl.backends.memory.storage import MemoryStorage
from poetctl.handlers import register_builtin
from poetctl.testing import FakeClock, Harness
from poetctl.transport import State

SAMPLES = load_samples()
FN = "detect_drift"


# -- handlers get their stores from the router --------------------------------------------------


def test_a_spool_router_keeps_handler_state_in_the_spool(spool: Path) -> None:
    """EventRouter(spool=...).stores are the spool's files (state/<fn>/current.json)."""
    router = EventRouter(spool=spool)
    assert isinstance(router.stores, FsStorage)
    router.stores.state.record_version(FN, "v1", {})
    assert (spool / "state" / FN / "current.json").is_file()


def test_a_memory_router_keeps_handler_state_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EventRouter(transport=MemoryTransport()) gets memory stores and writes nothing to disk."""
    monkeypatch.chdir(tmp_path)
    router = EventRouter(transport=MemoryTransport())
    assert isinstance(router.stores, MemoryStorage)
    router.stores.state.record_version(FN, "v1", {})
    assert list(tmp_path.iterdir()) == []


def test_a_transport_without_storage_says_so() -> None:
    """A transport that keeps no handler state: .stores raises with what to pass, not a later AttributeError."""

    class Bare(MemoryTransport):
        pass

    router = EventRouter(transport=Bare(), storage=None)
    assert isinstance(router.stores, MemoryStorage)  # a subclass of memory is still memory

    class Foreign:
        def publish(self, items: Any) -> list[bool]:
            return [True for _ in items]

    foreign = EventRouter(transport=Foreign())  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match=r"EventRouter\(storage=\.\.\.\)"):
        _ = foreign.stores


def test_harness_runs_the_builtin_handlers_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Harness + register_builtin: drift -> alerts, feedback -> learning -> regeneration, function.update -> state."""
    monkeypatch.chdir(tmp_path)
    h = Harness()
    register_builtin(h.router)
    base = SAMPLES["drift.detected"]["valid"][0]
    drifts = []
    for i in range(5):
        ex = f"00000000-0000-4000-8000-00000000000{i}"
        drifts.append(h.router.emit("drift.detected", {**base, "execution_id": ex}))
        h.router.emit(
            "feedback.human_validation",
            {**SAMPLES["feedback.human_validation"]["valid"][0], "execution_id": ex, "was_real_drift": False},
        )
    h.drain()
    alerts = h.events(types=["alert.create_external"])
    assert sorted(a.event.payload["drift_event_id"] for a in alerts if a.event) == sorted(drifts)
    assert len(h.events(types=["enhancement.regeneration_needed"])) == 1
    assert {p.event.payload["pattern_type"] for p in h.events(types=["learning.pattern_detected"]) if p.event} >= {
        "threshold_too_sensitive"
    }
    stores = h.router.stores
    with stores.learning.locked():
        assert len(stores.learning.load()["detections"]) == 5
    assert len(list(stores.feedback.processed())) == 5 and list(stores.feedback.pending()) == []
    h.router.emit("function.update", SAMPLES["function.update"]["valid"][0])
    h.drain()
    cur = stores.state.current(FN)
    assert cur is not None and cur["version"] == "v2"
    assert all(h.state_of(s.id) == State.PROCESSED for s in h.events())
    assert list(tmp_path.iterdir()) == []  # nothing on disk


def test_harness_function_state_uses_its_clock() -> None:
    """updated_at is the event's time (replayable by state rebuild); the store's clock only when none is given."""
    clock = FakeClock(1_000.0)
    h = Harness(clock=clock)
    register_builtin(h.router)
    eid = h.router.emit("function.update", SAMPLES["function.update"]["valid"][0])
    h.drain()
    cur = h.router.stores.state.current(FN)
    stored = h.router.transport.get(eid)
    assert stored is not None and stored.event is not None
    assert cur is not None and cur["updated_at"] == stored.event.timestamp
    assert h.router.stores.state.record_version("other_fn", "v1", {})["updated_at"] == 1_000.0
