"""The handlers' stores contract (poetctl.storage): function state, feedback records and learning state make
the same promises on every backend (spool files, memory, JetStream KV). Backend-only cases stay beside their
backend (tests/test_storage.py, tests/test_nats_storage.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import load_samples

from poetctl.errors import InputMissing, InvalidData
from poetctl.handlers.learning import LearningEngine
from poetctl.router import EventRouter
from poetctl.storage import FeedbackRecords, FunctionState, LearningState, Storage
from poetctl.transport import Transport

SAMPLES = load_samples()
FN = "detect_drift"


@pytest.fixture
def stores(transport: Transport) -> Storage:
    """The backend's own stores, as a router on it gives them to the handlers."""
    layout = getattr(transport, "layout", None)
    if layout is not None:
        layout.init()  # the spool's directories exist once a daemon or an emit has run; the stores live inside it
    return EventRouter(transport=transport).stores


def test_both_implementations_satisfy_the_protocols(stores: Storage) -> None:
    """Each backend's stores are a Storage, and its parts are the three store protocols."""
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


def test_learning_engine_runs_on_every_store(stores: Storage) -> None:
    """The learning engine works the same on every backend's store."""
    engine = LearningEngine(stores.learning)
    fake = type("E", (), {"id": "d1", "timestamp": 1_700_000_000.0, "payload": SAMPLES["drift.detected"]["valid"][0]})
    engine.record_drift_detection(fake, "high")
    assert list(engine.snapshot()["detections"]) == [SAMPLES["drift.detected"]["valid"][0]["execution_id"]]
