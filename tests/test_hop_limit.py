"""The hop limit (issue 9): causation depth in the envelope stops handler loops at [daemon] max_causation_depth."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from daemon_helpers.harness import ids_in, wait_for, write_config
from jsonschema import Draft202012Validator

from poetctl import EventRouter
from poetctl.cloudevents import from_cloudevent, to_cloudevent
from poetctl.config import load_config
from poetctl.errors import InvalidData
from poetctl.event import Event
from poetctl.router import CausationDepthExceeded
from poetctl.schemas import envelope_surely_valid

REPO = Path(__file__).resolve().parent.parent
HEALTH = {"service": "loop", "status": "healthy"}


def follow_up(router: EventRouter, cause: Event) -> Event:
    """What a handler running on ``cause`` would emit (built, not committed)."""
    buffer: list[Any] = []
    router.set_cause(cause, "loop", buffer)
    try:
        router.emit("system.health", HEALTH)
    finally:
        router.set_cause(None)
    ((ev, _),) = buffer
    return ev


def test_depth_counts_handler_hops_and_is_absent_outside_handlers(router: EventRouter, spool: Path) -> None:
    """An event from outside a handler has no causation_depth (0); each follow-up is its cause's + 1."""
    eid = router.emit("system.health", HEALTH)
    stored = json.loads((spool / "events" / "pending" / f"{eid}.json").read_bytes())
    assert "causation_depth" not in stored
    ev = Event.from_dict(stored)
    depths = []
    for _ in range(3):
        ev = follow_up(router, ev)
        depths.append(ev.causation_depth)
        assert Event.from_dict(json.loads(ev.to_json())) == ev  # survives the disk round trip, checksum included
    assert depths == [1, 2, 3]


def test_follow_up_past_the_limit_is_refused(spool: Path) -> None:
    """At the limit a follow-up is still emitted; one deeper raises CausationDepthExceeded naming the limit."""
    router = EventRouter(config=load_config(spool=spool))
    router.max_causation_depth = 3
    at_limit, _ = router.build("system.health", HEALTH, causation_depth=2)
    ok = follow_up(router, at_limit)
    assert ok.causation_depth == 3
    with pytest.raises(CausationDepthExceeded, match=r"causation depth 4, past the limit of 3 .*max_causation_depth"):
        follow_up(router, ok)


def test_the_hop_limit_error_is_permanent_and_still_invalid_data() -> None:
    """CausationDepthExceeded is a poetctl.Permanent (no retries) and still InvalidData with exit code 65."""
    import poetctl

    exc = CausationDepthExceeded("too deep", where="x")
    assert isinstance(exc, poetctl.Permanent) and isinstance(exc, InvalidData)
    assert exc.exit_code == 65 and str(exc) == "x: too deep"


def test_limit_comes_from_the_daemon_table_and_is_checked(tmp_path: Path) -> None:
    """[daemon] max_causation_depth sets the router's limit (default 64); a bad value is refused naming the key."""
    cfg = load_config(spool=tmp_path / "s")
    assert EventRouter(config=cfg).max_causation_depth == 64
    cfg.daemon = {"max_causation_depth": 7}
    assert EventRouter(config=cfg).max_causation_depth == 7
    for bad in (-1, "64", True, 10**7):
        cfg.daemon = {"max_causation_depth": bad}
        with pytest.raises(InvalidData, match="max_causation_depth"):
            EventRouter(config=cfg)


def test_fast_envelope_check_agrees_with_the_schema_on_causation_depth(router: EventRouter) -> None:
    """envelope_surely_valid never accepts a causation_depth the schema refuses, and accepts valid integers."""
    schema = json.loads((REPO / "schemas" / "envelope.json").read_text())
    ref, fast = Draft202012Validator(schema), jsonschema_rs.validator_for(schema)
    base = router.build("system.health", HEALTH)[0].to_dict()
    for value in (0, 1, 64, 1_000_000, 1_000_001, -1, 2**64, 2.5, True, "1", None, [1]):
        d = copy.deepcopy(base)
        d["causation_depth"] = value
        accepted = ref.is_valid(d) and fast.is_valid(d)
        if envelope_surely_valid(d):
            assert accepted, value
        elif type(value) is int:
            assert not accepted, value  # the fast check decides integers itself
    assert ref.is_valid({**base, "causation_depth": 5})


def test_cloudevents_carry_causation_depth(router: EventRouter) -> None:
    """to_cloudevent maps causation_depth to the poetcausationdepth extension and back exactly."""
    cause = router.build("system.health", HEALTH)[0]
    ev = follow_up(router, cause)
    ce = to_cloudevent(ev)
    assert ce["poetcausationdepth"] == 1
    assert from_cloudevent(ce) == ev.to_dict()
    assert "poetcausationdepth" not in to_cloudevent(cause)
    with pytest.raises(InvalidData, match="poetcausationdepth"):
        from_cloudevent({**ce, "poetcausationdepth": -2})


LOOP_HANDLERS = """
def register(router):
    def again(event):
        router.emit("system.health", dict(event.payload))

    def record(event):
        with open(OUT, "a") as fh:
            fh.write(event.id + "\\n")

    router.subscribe("system.health", again, name="loop")
    router.subscribe("system.metrics", record, name="record")
"""


def test_self_subscribing_handler_stops_at_the_limit(daemons: Any, tmp_path: Path, spool: Path) -> None:
    """A handler emitting the type it handles stops at the limit, dead-lettered at once (permanent); others flow."""
    limit = 5
    out = tmp_path / "handled.txt"
    handlers = tmp_path / "loop_handlers.py"
    handlers.write_text(f"OUT = {str(out)!r}\n" + LOOP_HANDLERS)
    config = write_config(tmp_path, max_causation_depth=limit, max_attempts=3)
    router = EventRouter(spool=spool)
    first = router.emit("system.health", HEALTH)
    others = [router.emit("system.metrics", {"service": "s", "metrics": {"n": float(i)}}) for i in range(3)]
    d = daemons.start(spool, config, handlers=[handlers])
    wait_for(lambda: ids_in(spool, "dead"), "the last event of the chain to be dead-lettered", procs=[d])
    (dead,) = ids_in(spool, "dead")
    wait_for(lambda: out.exists() and len(out.read_text().split()) == 3, "the other events to be handled", procs=[d])
    # Something emitted after the dead letter is still handled: the daemon is not wedged.
    late = router.emit("system.metrics", {"service": "s", "metrics": {"n": 9.0}})
    wait_for(lambda: late in out.read_text().split(), "an event emitted after the dead letter", procs=[d])
    assert d.stop() == 0
    chain = {}
    for state in ("processed", "dead"):
        for eid in ids_in(spool, state):
            ev = json.loads((spool / "events" / state / f"{eid}.json").read_bytes())
            if ev["type"] == "system.health":
                chain[ev.get("causation_depth", 0)] = (state, eid)
    assert sorted(chain) == list(range(limit + 1))  # depths 0..limit, nothing deeper
    assert chain[0] == ("processed", first) and chain[limit] == ("dead", dead)
    assert all(state == "processed" for depth, (state, _) in chain.items() if depth < limit)
    error = json.loads((spool / "events" / "dead" / f"{dead}.error").read_text())
    # Permanent: one attempt of the allowed three, no retry (a retry would hit the same limit).
    assert error["handler"] == "loop" and error["attempts"] == 1 and error["reason"] == "permanent"
    assert f"CausationDepthExceeded: follow-up 'system.health' of event {dead}" in error["error"]
    assert f"causation depth {limit + 1}, past the limit of {limit}" in error["error"]
    assert set(others) | {late} <= ids_in(spool, "processed")
    assert not ids_in(spool, "pending") and not ids_in(spool, "corrupt")
