"""Emit serialises an event once: the builder's sealed line is what the spool stores (issue 14).

The fast seal (``plain_json`` + ``EnvelopeBuilder._seal``) must give exactly
the bytes and checksum of the careful path (``to_dict`` + ``compute_checksum``
+ ``to_json``), and every payload the careful path refuses must still be
refused with the same message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from poetctl import EventRouter
from poetctl import envelope as envelope_mod
from poetctl.errors import InvalidData
from poetctl.event import Event, compute_checksum, verify_checksum
from poetctl.schemas import SchemaRegistry

SAMPLES = Path(__file__).parent / "samples"


def careful_line(ev: Event) -> bytes:
    """What the spool stores: the whole envelope serialised from the event in canonical form (sorted keys)."""
    return orjson.dumps(ev.to_dict(), option=orjson.OPT_SORT_KEYS) + b"\n"


def large_metrics(n: int = 500) -> dict[str, Any]:
    return {
        "service": "bench",
        "host": "h1",
        "window_seconds": 60,
        "metrics": {f"metric_{k:03d}_p99": round(k * 7.919 / 3, 4) for k in range(n)},
    }


def sample_payloads() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(SAMPLES.glob("*.json")):
        for p in json.loads(f.read_text())["valid"]:
            out.append((f.stem, p))
    return out


ANY = "test.anything"  # a user type whose schema takes any object


@pytest.fixture
def router(tmp_path: Path) -> EventRouter:
    (tmp_path / "schemas" / ANY).mkdir(parents=True)
    (tmp_path / "schemas" / ANY / "1.json").write_text('{"type": "object"}')
    return EventRouter(spool=tmp_path / "spool", registry=SchemaRegistry([tmp_path / "schemas"]))


@pytest.mark.parametrize("kw", [{}, {"priority": "high", "correlation_id": "c-1", "expires_at": 2e9}])
def test_sealed_line_is_the_careful_serialisation(router: EventRouter, kw: dict[str, Any]) -> None:
    """Every sample payload (and a 500-metric one): the sealed line and checksum equal the careful path's."""
    fast = 0
    for event_type, payload in [*sample_payloads(), ("system.metrics", large_metrics())]:
        ev, _ = router.build(event_type, payload, **kw)
        assert ev.checksum == compute_checksum(ev.to_dict()), event_type
        assert ev.line() == careful_line(ev), event_type
        verify_checksum(orjson.loads(ev.line()))
        fast += ev.sealed is not None
    assert fast > 0  # the fast seal ran (the samples with a null take the careful path)


TRICKY: list[dict[str, Any]] = [
    {"note": "null", "brace": "{[{[", "esc": 'a"b\\c\n', "uni": "é€😀"},  # text that looks like JSON
    {"n": None, "x": 1},  # a real null: the walk decides
    {"big": 2**64 - 1, "small": -(2**63), "f": 1e300, "t": True},  # the 64-bit edges
    {"nested": {"b": 2, "a": [1, {"z": 0, "y": (1, 2)}]}},  # key order and a tuple
]


@pytest.mark.parametrize("extra", TRICKY)
def test_tricky_payloads_seal_like_the_careful_path(router: EventRouter, extra: dict[str, Any]) -> None:
    """Strings holding 'null' or braces, nulls, 64-bit edges, unsorted nesting: same bytes, verifying checksum."""
    ev, _ = router.build(ANY, extra)
    assert ev.line() == careful_line(ev)
    verify_checksum(orjson.loads(ev.line()))


def nested(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(depth - 1):
        d = {"a": d}
    return d


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (float("nan"), "NaN is not a JSON number"),
        (float("inf"), "Infinity is not a JSON number"),
        (2**64, "does not fit in 64 bits"),
        ({1: "x"}, "is not a string"),
        (nested(64), "nested deeper than 64 levels"),
    ],
)
def test_refused_payloads_keep_their_message(router: EventRouter, bad: Any, message: str) -> None:
    """What the walk refuses is still refused, naming the JSON path, before anything is written."""
    with pytest.raises(InvalidData, match=message) as info:
        router.emit(ANY, {"service": "s", "x": bad})
    assert "$.payload.x" in str(info.value)
    assert not router.layout.pending.exists() or not list(router.layout.pending.glob("*.json"))


def test_nesting_at_the_limit_is_accepted(router: EventRouter) -> None:
    """63 levels under the payload (64 with it) pass, as before: only deeper is refused."""
    ev, _ = router.build(ANY, {"x": nested(63)})
    assert ev.line() == careful_line(ev)


@pytest.mark.parametrize("metrics", [3, 500])  # a small payload (the whole envelope scanned) and a large one
@pytest.mark.parametrize("field", ["expires_at", "causation_depth", "environment"])
def test_nan_in_the_head_takes_the_careful_path(router: EventRouter, metrics: int, field: str) -> None:
    """A NaN outside the payload is refused as before (named as a NaN at its path), never sealed as null."""
    kw: dict[str, Any] = {field: float("nan")}
    with pytest.raises(InvalidData, match=f"{field}: NaN is not a JSON number"):
        router.build("system.metrics", large_metrics(metrics), **kw)


def test_a_plain_payload_is_not_walked(router: EventRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large plain payload skips the per-value walk (the walk was most of a 14 KiB event's CPU)."""

    def walk(*a: Any, **k: Any) -> None:
        raise AssertionError("check_depth walked a plain payload")

    monkeypatch.setattr(envelope_mod, "check_depth", walk)
    ev, _ = router.build("system.metrics", large_metrics())
    assert ev.line() == careful_line(ev)


def test_publish_stores_the_sealed_line(router: EventRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """emit_many writes the builder's bytes: the envelope is not serialised again on the way to the spool."""
    built = [router.build("system.metrics", large_metrics()) for _ in range(3)]

    def again(self: Event) -> bytes:
        raise AssertionError("the event was serialised again")

    monkeypatch.setattr(Event, "to_json", again)
    monkeypatch.setattr(Event, "to_dict", again)
    router.commit_events(built)
    for ev, _ in built:
        stored = (router.layout.pending / f"{ev.id}.json").read_bytes()
        assert stored == ev.sealed[1] if ev.sealed else False


def test_reseal_drops_the_sealed_line(router: EventRouter) -> None:
    """Changing a built event and sealing it again stores the new content, not the first line."""
    ev, _ = router.build("system.metrics", large_metrics(3))
    first = ev.line()
    ev.payload["metrics"]["m_new"] = 2.5
    ev.seal()
    assert ev.line() != first
    assert ev.line() == careful_line(ev)
    verify_checksum(orjson.loads(ev.line()))


def test_replace_and_equality_ignore_the_sealed_line(router: EventRouter) -> None:
    """Event.replace gives an event without the old line; equality is by content only."""
    ev, _ = router.build("system.metrics", large_metrics(3))
    other = ev.replace(topic="poet/other")
    assert other.sealed is None
    assert b"poet/other" in other.line()
    assert Event.from_dict(orjson.loads(ev.line())) == ev
