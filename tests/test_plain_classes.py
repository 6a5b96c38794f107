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


# -- the transport contract's classes and Subscription (on the path of a one-event `poetctl emit`) ----------


def _handler(event: Event) -> None:
    """A module-level handler (picklable)."""


@dataclasses.dataclass(slots=True)
class RefAttempt:
    handler: str
    attempt: int
    at: float
    error: str
    traceback: str = ""


@dataclasses.dataclass(slots=True)
class RefRecord:
    done: set[str] = dataclasses.field(default_factory=set)
    failures: list[Any] = dataclasses.field(default_factory=list)
    not_before: float = 0.0
    deliveries: int = 0


@dataclasses.dataclass(slots=True, frozen=True)
class RefOutgoing:
    event: Any
    data: bytes
    keyed: bool


@dataclasses.dataclass(slots=True, eq=False)
class RefDelivery:
    event: Any
    key: str
    record: Any
    handle: Any = None


@dataclasses.dataclass(slots=True)
class RefFetched:
    deliveries: list[Any] = dataclasses.field(default_factory=list)
    quarantined: int = 0
    deferred: int = 0
    more: bool = False
    recovered: int = 0


@dataclasses.dataclass(slots=True)
class RefStored:
    id: str
    state: str
    event: Any
    info: dict[str, Any] | None = None


@dataclasses.dataclass(slots=True)
class RefSubscription:
    pattern: str
    fn: Any
    name: str
    timeout: float | None = None


def _contract_cases() -> list[tuple[Any, Any, Any]]:
    """(written-out instance, dataclass instance, a differing written-out instance) per class."""
    from poetctl.subscriptions import Subscription
    from poetctl.transport import Attempt, Delivery, Fetched, Outgoing, Record, Stored

    ev = Event(*ARGS, checksum="c")
    att = Attempt("h", 1, 2.5, "boom")
    rec = Record({"h"}, [att], 3.0, 2)
    return [
        (att, RefAttempt("h", 1, 2.5, "boom"), Attempt("h", 1, 2.5, "boom", "tb")),
        (Record(), RefRecord(), Record(deliveries=1)),
        (rec, RefRecord({"h"}, [att], 3.0, 2), Record({"h"}, [att], 3.0, 3)),
        (Outgoing(ev, b"x", True), RefOutgoing(ev, b"x", True), Outgoing(ev, b"x", False)),
        (Delivery(ev, "k", rec), RefDelivery(ev, "k", rec), Delivery(ev, "k", rec)),
        (Fetched(), RefFetched(), Fetched(more=True)),
        (Stored("i", "dead", ev, {"r": 1}), RefStored("i", "dead", ev, {"r": 1}), Stored("i", "dead", None)),
        (Subscription("a.*", _handler, "n"), RefSubscription("a.*", _handler, "n"), Subscription("a.*", _handler, "m")),
    ]


@pytest.mark.parametrize("case", range(8))
def test_contract_classes_match_their_dataclasses(case: int) -> None:
    """Transport contract classes and Subscription: repr, defaults, equality and hashability as the dataclasses had."""
    obj, ref, other = _contract_cases()[case]
    assert repr(obj).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    assert type(obj).__name__ == type(ref).__name__.removeprefix("Ref")
    # Equality by fields (identity for Delivery, eq=False), never equal to another class.
    ref_values = [getattr(ref, f.name) for f in dataclasses.fields(ref)]
    assert obj._values() == tuple(ref_values)
    assert (obj == type(obj)(*obj._values())) == (ref == type(ref)(*ref_values))
    assert obj != other and obj.__eq__(ref) is NotImplemented
    try:
        ref_hash: int | None = hash(ref)
    except TypeError:
        ref_hash = None
    if ref_hash is None:
        with pytest.raises(TypeError):
            hash(obj)
    else:
        assert (hash(obj) == hash(type(obj)(*obj._values()))) == (hash(ref) == hash(type(ref)(*ref_values)))
    with pytest.raises(AttributeError):
        obj.not_a_field = 1
    if not isinstance(ref, RefDelivery):  # a lease compares by identity: a copy is another lease
        assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj and pickle.loads(pickle.dumps(obj)) == obj


def test_contract_defaults_are_new_objects_and_outgoing_is_frozen() -> None:
    """Record/Fetched get a new set/list each; Outgoing refuses assignment, as a frozen dataclass."""
    from poetctl.transport import Fetched, Outgoing, Record

    a, b = Record(), Record()
    a.done.add("h")
    a.failures.append(None)  # type: ignore[arg-type]
    assert b.done == set() and b.failures == [] and Fetched().deliveries is not Fetched().deliveries
    out = Outgoing(Event(*ARGS), b"x", True)
    with pytest.raises(AttributeError):
        out.keyed = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del out.data  # type: ignore[misc]
    assert out.keyed is True and out.data == b"x"
