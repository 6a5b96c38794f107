"""The handlers' storage interface (poetctl.storage): the spool's and the memory stores keep the same
promises, handlers get their stores from the router, and the Harness runs the built-in handlers in memory."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import load_samples

from poetctl import EventRouter
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.fs.storage import FsStorage
from poetctl.backends.memory import MemoryTransport
from poetctl.backends.memory_storage import MemoryStorage
from poetctl.errors import InputMissing, InvalidData
from poetctl.handlers import register_builtin
from poetctl.handlers.learning import LearningEngine
from poetctl.storage import FeedbackRecords, FunctionState, LearningState, Storage
from poetctl.testing import FakeClock, Harness
from poetctl.transport import State

SAMPLES = load_samples()
FN = "detect_drift"


@pytest.fixture(params=["fs", "memory"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same three stores on the spool and in memory."""
    if request.param == "fs":
        layout = SpoolLayout(tmp_path / "spool")
        layout.init()
        return FsStorage(layout)
    return MemoryStorage(FakeClock(1_700_000_000.0))


def test_both_implementations_satisfy_the_protocols(stores: Storage) -> None:
    """FsStorage and MemoryStorage are Storage, and their parts are the three store protocols."""
    assert isinstance(stores, Storage)
    assert isinstance(stores.state, FunctionState)
    assert isinstance(stores.feedback, FeedbackRecords)
    assert isinstance(stores.learning, LearningState)


def test_function_state_records_versions_idempotently_in_order(stores: Storage) -> None:
    """record_version makes a version current, keeps history oldest first, and a repeat keeps updated_at."""
    st = stores.state
    assert st.current(FN) is None and st.history(FN) == [] and st.functions() == []
    first = st.record_version(FN, "v1", {"reason": "r1"}, event_id="e1")
    st.record_version(FN, "v2", {"reason": "r2"}, event_id="e2", previous_version="v1")
    again = st.record_version(FN, "v1", {"reason": "r1"}, event_id="e1")
    assert again["updated_at"] == first["updated_at"]
    assert st.current(FN) == again  # the last recorded version is current
    assert [h["version"] for h in st.history(FN)] == ["v1", "v2"]
    assert st.functions() == [FN]
    assert st.require(FN)["version"] == "v1"


def test_function_state_refuses_unsafe_names_and_missing_state(stores: Storage) -> None:
    """A function name or version that could not be a path part is refused (65); no state is 66."""
    with pytest.raises(InvalidData):
        stores.state.record_version("../etc", "v1", {})
    with pytest.raises(InvalidData):
        stores.state.record_version(FN, "v1/../../x", {})
    with pytest.raises(InputMissing):
        stores.state.require("never_recorded")


def test_stored_records_cannot_be_changed_through_what_was_returned(stores: Storage) -> None:
    """Mutating a returned or passed-in record does not change what is stored."""
    data: dict[str, Any] = {"changes": ["a"]}
    out = stores.state.record_version(FN, "v1", data)
    data["changes"].append("b")
    out["changes"].append("c")
    cur = stores.state.current(FN)
    assert cur is not None and cur["changes"] == ["a"]


def test_feedback_moves_once_from_pending_to_processed(stores: Storage) -> None:
    """add is a no-op for a known id (pending or processed); mark_processed moves a pending record once."""
    fb = stores.feedback
    fid = str(uuid.uuid4())
    assert fb.add(fid, {"n": 1}) is True
    assert fb.add(fid, {"n": 2}) is False
    assert list(fb.pending()) == [(fid, {"n": 1})] and list(fb.processed()) == []
    assert fb.mark_processed(fid) is True
    assert fb.mark_processed(fid) is False
    assert fb.add(fid, {"n": 3}) is False
    assert list(fb.pending()) == [] and list(fb.processed()) == [(fid, {"n": 1})]
    with pytest.raises(InvalidData):
        fb.add("../x", {})


def test_learning_state_round_trips_under_its_lock(stores: Storage) -> None:
    """load gives every section (empty at first); save then load gives the document back."""
    ls = stores.learning
    with ls.locked():
        doc = ls.load()
        assert doc == {"detections": {}, "feedback": {}, "reported": {}, "decisions": {}}
        doc["detections"]["x"] = {"at": 1.0}
        ls.save(doc)
    with ls.locked():
        assert ls.load()["detections"] == {"x": {"at": 1.0}}


def test_learning_engine_runs_on_either_store(stores: Storage) -> None:
    """The learning engine works the same on the spool's store and on the memory one."""
    engine = LearningEngine(stores.learning)
    fake = type("E", (), {"id": "d1", "timestamp": 1_700_000_000.0, "payload": SAMPLES["drift.detected"]["valid"][0]})
    engine.record_drift_detection(fake, "high")
    assert list(engine.snapshot()["detections"]) == [SAMPLES["drift.detected"]["valid"][0]["execution_id"]]


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
