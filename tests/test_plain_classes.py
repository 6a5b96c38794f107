"""The written-out classes of the read path behave as the dataclasses they replaced (constructor, repr, equality)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.fs.query import Found
from poetctl.chain.expect import ChainResult
from poetctl.chain.forest import Node
from poetctl.config import Config
from poetctl.event import Event
from poetctl.limits import Limits
from poetctl.ops.status import Thresholds
from poetctl.selection import Query


@dataclasses.dataclass(slots=True)
class RefEvent:
    id: str
    type: str
    source: str
    timestamp: float
    topic: str
    payload: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    expires_at: float | None = None
    checksum: str | None = None
    causation_depth: int | None = None
    priority: str | None = None


ARGS = ("e-1", "a.b", "src", 1.5, "t/x", {"k": [1, 2]})


def test_event_matches_the_dataclass() -> None:
    """Event's defaults, repr and equality are those of the former dataclass; sealed is not compared."""
    ev, ref = Event(*ARGS), RefEvent(*ARGS)
    assert repr(ev).replace("Event(", "X(") == repr(ref).replace("RefEvent(", "X(")
    assert ev.metadata == {} and ev.metadata is not Event(*ARGS).metadata  # a new dict each
    other = Event(*ARGS, correlation_id="c")
    assert ev != other and ev == Event(*ARGS)
    other.sealed = ("x", b"y")
    assert other == Event(*ARGS, correlation_id="c")
    assert ev != ref and ev.__eq__(ref) is NotImplemented
    with pytest.raises(TypeError):
        hash(ev)
    with pytest.raises(AttributeError):
        ev.not_a_field = 1  # type: ignore[attr-defined]


def test_event_replace_is_dataclasses_replace() -> None:
    """Event.replace copies every field but the changed ones and drops the sealed line."""
    ev = Event(*ARGS, priority="high", checksum="sha256:x")
    ev.sealed = ("sha256:x", b"line")
    new = ev.replace(topic="t/y")
    assert new.topic == "t/y" and new.priority == "high" and new.sealed is None
    assert dataclasses.replace(RefEvent(*ARGS), topic="t/y").topic == new.replace(priority=None).topic
    with pytest.raises(TypeError):
        ev.replace(nope=1)


def test_found_orders_by_time_then_id() -> None:
    """Found sorts and compares by (timestamp, id) only, as the order=True dataclass did."""
    ev = Event(*ARGS)
    a, b = Found(1.0, "b", "pending", Path("x"), ev), Found(1.0, "c", "dead", Path("y"), ev, b"raw")
    assert a < b and b > a and a <= b and sorted([b, a]) == [a, b]
    assert a == Found(1.0, "b", "dead", Path("z"), ev, b"other")
    assert "raw" not in repr(b) and a.replace(raw=b"r").raw == b"r"


def test_other_classes_keep_their_defaults_and_equality() -> None:
    """Query, Config, Node, ChainResult, Thresholds and Limits: defaults, equality, repr naming each field."""
    assert Query() == Query() and Query(types=["a.*"]) != Query()
    assert "states=" in repr(Query()) and Query().states == tuple(Query().states)
    c1, c2 = Config(), Config()
    assert c1 == c2 and c1.handlers is not c2.handlers and repr(c1).startswith("Config(spool=")
    n = Node(Event(*ARGS), "processed")
    assert n.children == [] and n == Node(Event(*ARGS), "processed") and n.orphan is False
    assert ChainResult(True, ["a"], []) == ChainResult(True, ["a"], [], None, None)
    assert Thresholds() == Thresholds(60.0, 300.0, 0, 0, 0, 0) and "max_lag=300.0" in repr(Thresholds())
    lim = Limits(1, 2, (("a", 1.0),))
    assert lim == Limits(1, 2, (("a", 1.0),)) and hash(lim) == hash(Limits(1, 2, (("a", 1.0),)))
    with pytest.raises(AttributeError):
        lim.max_pending = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "obj",
    [Event(*ARGS, checksum="c"), Config(), Query(types=["a.*"]), Limits(1, 2, (("a", 1.0),)), Thresholds(max_dead=2)],
    ids=lambda o: type(o).__name__,
)
def test_copies_and_pickles_are_equal(obj: Any) -> None:
    """copy, deepcopy and pickle give equal objects (frozen Limits included), as with the dataclasses."""
    assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj and pickle.loads(pickle.dumps(obj)) == obj
