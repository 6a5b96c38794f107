"""Events are stored in canonical form and verified by hashing the stored bytes (issue 14).

The builder stores each event's line as the canonical envelope (sorted keys,
the bytes the checksum covers) with the ``checksum`` member in its sorted
place, so emit serialises once and a reader verifies by hashing the line with
that member spliced out. Files in any other key order (older versions, other
writers, hand-made) still verify the careful way; a corrupt file is still
detected either way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from poetctl import EventRouter
from poetctl.backends.fs import reader as reader_mod
from poetctl.backends.fs.reader import CorruptEvent, decode_event
from poetctl.errors import InvalidData
from poetctl.event import Event, compute_checksum, stored_checksum_matches


def metrics(n: int) -> dict[str, Any]:
    # Keys deliberately out of order: the stored payload is sorted whatever order the caller used.
    return {"window_seconds": 60, "service": "s", "host": "h", "metrics": {f"m{k:03d}": k / 7 for k in range(n, 0, -1)}}


def stored(router: EventRouter, ids: list[str]) -> list[bytes]:
    pending = router.config.spool / "events" / "pending"
    return [(pending / f"{i}.json").read_bytes() for i in ids]


@pytest.fixture
def router(tmp_path: Path) -> EventRouter:
    return EventRouter(spool=tmp_path / "spool")


def no_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the colon counts fail loudly: a large canonical line must be proved exact by comparison."""

    def refuse(*a: Any) -> bool:
        raise AssertionError("counted the colons of a canonical stored line")

    monkeypatch.setattr(reader_mod, "surely_exact", refuse)


@pytest.mark.parametrize("size", [3, 500])
@pytest.mark.parametrize("kw", [{}, {"causation_id": "c-1", "correlation_id": "k-1", "priority": "high"}])
def test_stored_line_is_canonical_and_proved_exact_by_comparison(
    router: EventRouter, monkeypatch: pytest.MonkeyPatch, size: int, kw: dict[str, Any]
) -> None:
    """emit stores sorted canonical lines; the reader proves a large one exact by comparison, not by counting."""
    batch = [("system.metrics", metrics(size)) for _ in range(3)]
    ids = router.emit_many(batch) if not kw else [router.emit("system.metrics", metrics(size), **kw)]
    if size >= 100:  # small lines are counted: cheaper than the comparison there
        no_counting(monkeypatch)
    for data in stored(router, ids):
        doc = orjson.loads(data)
        assert data == orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) + b"\n"
        assert list(doc["payload"]) == sorted(doc["payload"])
        assert stored_checksum_matches(data, doc["checksum"])
        ev = decode_event(data, router.registry, where="t")
        assert ev.payload == metrics(size) and ev.checksum == doc["checksum"]


def reordered(data: bytes) -> bytes:
    """The same event in the on-disk key order older versions wrote (envelope order, payload as given)."""
    doc = orjson.loads(data)
    payload = doc["payload"]
    doc["payload"] = {k: payload[k] for k in reversed(list(payload))}
    return orjson.dumps(Event.from_dict(doc).to_dict()) + b"\n"


def pretty(data: bytes) -> bytes:
    return orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize("rewrite", [reordered, pretty], ids=["older-key-order", "pretty-printed"])
def test_lines_in_another_form_still_verify(router: EventRouter, rewrite: Callable[[bytes], bytes]) -> None:
    """A line in another key order or layout misses the fast path and verifies the careful way, as before."""
    (eid,) = router.emit_many([("system.metrics", metrics(40))])
    (data,) = stored(router, [eid])
    other = rewrite(data)
    assert other != data
    doc = orjson.loads(other)
    assert not stored_checksum_matches(other, doc["checksum"])
    assert doc["checksum"] == compute_checksum(doc)
    ev = decode_event(other, router.registry, where="t")
    assert ev.id == eid and ev.payload == metrics(40)


def flip_payload_digit(data: bytes) -> bytes:
    i = data.index(b'"m001":') + len(b'"m001":') + 2
    return data[:i] + (b"1" if data[i : i + 1] != b"1" else b"2") + data[i + 1 :]


def flip_checksum_hex(data: bytes) -> bytes:
    i = data.index(b'"sha256:') + 10
    return data[:i] + (b"a" if data[i : i + 1] != b"a" else b"b") + data[i + 1 :]


def drop_member_comma(data: bytes) -> bytes:
    i = data.index(b'"checksum":')
    j = data.index(b'",', i) + 1
    return data[:j] + b" " + data[j + 1 :]


def retyped(data: bytes) -> bytes:
    return data.replace(b'"window_seconds":60', b'"window_seconds":61')


@pytest.mark.parametrize(
    "corrupt", [flip_payload_digit, flip_checksum_hex, drop_member_comma, retyped], ids=lambda f: f.__name__
)
def test_a_corrupt_canonical_line_is_detected(router: EventRouter, corrupt: Callable[[bytes], bytes]) -> None:
    """A damaged canonical line fails both the fast and the careful verification: bad_checksum (or bad_json)."""
    (eid,) = router.emit_many([("system.metrics", metrics(40))])
    (data,) = stored(router, [eid])
    bad = corrupt(data)
    assert bad != data
    with pytest.raises(CorruptEvent) as info:
        decode_event(bad, router.registry, where="t")
    assert info.value.reason in ("bad_checksum", "bad_json")
    if corrupt is not drop_member_comma:  # still valid JSON: the checksum is what catches it
        assert info.value.reason == "bad_checksum"


@pytest.mark.parametrize(
    "doc",
    [
        {"a": 1, "checksum": None},  # the member last: the comma before it goes
        {"checksum": None, "z": [1, 2]},  # the member first
        {"b": {"checksum": "x"}, "checksum": None, "c": '"checksum":'},  # look-alikes elsewhere
    ],
)
def test_the_splice_takes_out_exactly_the_member(doc: dict[str, Any]) -> None:
    """The checksum of the rest, spliced back in any position, is recognised; one byte off is not."""
    rest = {k: v for k, v in doc.items() if k != "checksum"}
    stated = compute_checksum(rest)
    doc["checksum"] = stated
    line = orjson.dumps(doc) + b"\n"
    assert stored_checksum_matches(line, stated)
    assert stored_checksum_matches(line[:-1], stated)  # no final newline
    last = line.rindex(b'"', 0, line.rindex(b'"'))  # inside the last member's key or value
    assert not stored_checksum_matches(line[: last + 1] + b"X" + line[last + 1 :], stated)
    assert not stored_checksum_matches(line, stated[:-1] + ("0" if stated[-1] != "0" else "1"))
    assert not stored_checksum_matches(line, "md5:" + stated[7:])


def test_a_nan_payload_is_still_refused(router: EventRouter) -> None:
    """The faster null scan still sends a NaN (stored as null by orjson) to the walk that refuses it."""
    payload = metrics(500)
    payload["metrics"]["m250"] = float("nan")
    with pytest.raises(InvalidData, match="NaN"):
        router.emit("system.metrics", payload)
