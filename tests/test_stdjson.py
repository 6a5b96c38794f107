"""poetctl.stdjson gives orjson's bytes and values, and the spool reader's json path orjson's verdicts."""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import orjson
import pytest

from poetctl import stdjson
from poetctl.backends.fs import reader
from poetctl.backends.fs.reader import CorruptEvent, decode_event
from poetctl.event import compute_checksum

EID = "0190a5b2-3c4d-7e8f-9a0b-1c2d3e4f5a6b"


@pytest.fixture
def stdlib_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a process that has not imported orjson (the test process has)."""
    monkeypatch.setattr(stdjson, "orjson_loaded", lambda: False)


def _orjson(obj: Any, indent: bool = False) -> bytes | str:
    try:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2) if indent else orjson.dumps(obj)
    except TypeError as exc:
        return f"TypeError: {exc}"


def _ours(obj: Any, indent: bool = False) -> bytes | str:
    try:
        return stdjson.dumps(obj, indent=indent)
    except TypeError as exc:
        return f"TypeError: {exc}"


def _floats(n: int) -> list[float]:
    rnd = random.Random(14)
    out = [0.0, -0.0, 0.1, 1e15, 1e16, 1e-4, 1e-5, 5e-324, 1.7976931348623157e308, 1e22, 2.0**53, 123456789.125]
    for _ in range(n):
        bits = struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0]
        out += [bits, rnd.uniform(-1e6, 1e6), round(rnd.uniform(-1e4, 1e4), rnd.randint(0, 8))]
        out.append(rnd.random() * 10 ** rnd.randint(-12, 22))
    return [f for f in out if f - f == 0.0]


ODD: dict[str, Any] = {
    "exponent floats": {"a": 1e-05, "b": [1e16, -2.5e-7]},
    "exponent-like text in a string": {"s": "3f1c2b9e-8a4d-4e2f 1e-05, 12345678901234567890]"},
    "64-bit edges": [2**63 - 1, -(2**63), 2**64 - 1, 0, -1],
    "beyond 64 bits": {"n": 2**64},
    "below 64 bits": [-(2**63) - 1],
    "NaN": {"x": float("nan")},
    "Infinity": [float("inf")],
    "int key": {1: "a"},
    "bool key": {True: "a"},
    "None key": {None: "a"},
    "lone surrogate": {"s": "a\ud800b"},
    "surrogate key": {"\udc00": 1},
    "escapes": {"s": "".join(map(chr, range(0, 0x80))) + "\u2028\u2029\ufeff\U0001f600é"},
    "tuple": {"t": (1, "a", None, True, False)},
    "empty containers": {"a": [], "b": {}, "c": [{}, []]},
    "nested 254": json.loads("[" * 254 + "]" * 254),
    "nested 255": json.loads("[" * 255 + "]" * 255),
    "a set": {"s": {1}},
    "bytes": {"b": b"x"},
    "a dict subclass": {"d": type("D", (dict,), {})(a=1)},
    "str subclass": {"s": type("S", (str,), {})("x")},
    "deep dict in a list": [{"a": [{"b": {2: 3}}]}],
}


@pytest.mark.parametrize("indent", [False, True])
@pytest.mark.parametrize("case", sorted(ODD))
def test_dumps_is_orjson_for_odd_values(stdlib_only: None, case: str, indent: bool) -> None:
    """stdjson.dumps gives orjson's exact bytes, or its TypeError, for each value the two libraries treat apart."""
    obj = ODD[case]
    assert _ours(obj, indent) == _orjson(obj, indent)


def test_dumps_is_orjson_for_many_floats(stdlib_only: None) -> None:
    """Every float (shortest form, any magnitude) is written as orjson writes it, compact and indented."""
    floats = _floats(3000)
    assert stdjson.dumps(floats) == orjson.dumps(floats)
    assert stdjson.dumps({"f": floats[:200]}, indent=True) == orjson.dumps(
        {"f": floats[:200]}, option=orjson.OPT_INDENT_2
    )


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"b":[1.5,"x",null,true]}',
        b"18446744073709551616",
        b"-9223372036854775809",
        b'{"a":1e400}',
        b"NaN",
        b'{"a":Infinity}',
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",
        '{"a":1}'.encode("utf-16"),
        b'{"a":"\xff"}',
        b'{"a":1,"a":2}',
        b'{"a":1e-05}',
        b"[" * 300 + b"]" * 300,
        b"{nope",
    ],
)
def test_loads_is_orjson(stdlib_only: None, data: bytes) -> None:
    """stdjson.loads returns orjson's value (same types), or raises orjson's own error."""

    def run(fn: Any) -> Any:
        try:
            value = fn(data)
        except orjson.JSONDecodeError as exc:
            return f"error: {exc}"
        return repr(value)  # types too: 1 and 1.0 differ

    assert run(stdjson.loads) == run(orjson.loads)


def sealed(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": EID, "type": "svc.up", "source": "t", "timestamp": 1792502780.3090167, "topic": "svc"}
    d["correlation_id"] = "3f1c2b9e-8a4d-4e2f-9c1a-5b6d7e8f9a0b"
    d["metadata"] = {"version": "1.0"}
    d["payload"] = {"service": "a:b", "n": 3, "none": None, "f": 0.25, "é": "ü\u2028"}
    d.update(extra)
    d["checksum"] = compute_checksum(d)
    return d


GOOD = orjson.dumps(sealed())

EVENTS = {
    "sound": GOOD,
    "sound, spaced": json.dumps(sealed(), indent=1).encode(),
    "sound, exponent floats": orjson.dumps(sealed(payload={"small": 1e-07, "big": 1e300})),
    "sound, 64-bit edge integers": orjson.dumps(sealed(payload={"a": 2**64 - 1, "b": -(2**63)})),
    "sound, colon escaped in a string": GOOD.replace(b'"a:b"', b'"a\\u003ab"'),
    "sound, exponent written differently": GOOD.replace(b'"f":0.25', b'"f":25e-2'),
    "checksum wrong": GOOD.replace(b'"n":3', b'"n":4'),
    "checksum missing": orjson.dumps({k: v for k, v in sealed().items() if k != "checksum"}),
    "checksum not a string": orjson.dumps({**sealed(), "checksum": 7}),
    "duplicate key": GOOD.replace(b'"n":3', b'"n":3,"n":3'),
    "duplicate checksum": GOOD[:-1] + b',"checksum":"x"}',
    "integer beyond 64 bits": GOOD.replace(b'"n":3', b'"n":36893488147419103232'),
    "NaN literal": GOOD.replace(b'"n":3', b'"n":NaN'),
    "byte-order mark": b"\xef\xbb\xbf" + GOOD,
    "UTF-16": GOOD.decode().encode("utf-16"),
    "lone surrogate": GOOD.replace(b'"a:b"', b'"a\\ud800b"'),
    "not UTF-8": GOOD.replace(b'"a:b"', b'"a\xffb"'),
    "not json": b"{nope",
    "not an object": b"[1,2]",
    "nested too deep": json.dumps(sealed(payload={"x": json.loads("[" * 70 + "]" * 70)})).encode(),
    "many brackets, shallow": orjson.dumps(sealed(payload={"l": [[1]] * 40})),
}


def verdict(data: bytes) -> str:
    try:
        ev = decode_event(data, None, where="f", expected_id=EID)
    except CorruptEvent as exc:
        return f"{exc.reason}: {exc.detail}"
    return f"ok {ev!r} {ev.to_json()!r}"


@pytest.mark.parametrize("case", sorted(EVENTS))
def test_reader_json_path_gives_orjson_verdict(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """A spool file decodes to the same event, or is refused for the same reason and message, without orjson."""
    data = EVENTS[case]
    with_orjson = verdict(data)
    monkeypatch.setattr(stdjson, "orjson_loaded", lambda: False)
    assert verdict(data) == with_orjson


def test_reader_json_path_takes_sound_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sound events with ids, text and plain floats are proven by the standard library alone (no orjson parse)."""
    monkeypatch.setattr(stdjson, "orjson_loaded", lambda: False)

    def no_orjson(data: bytes, where: str | None) -> Any:
        raise AssertionError("orjson path taken")

    monkeypatch.setattr(reader, "_parsed", no_orjson)
    for case in ("sound", "sound, spaced", "sound, exponent written differently"):
        assert verdict(EVENTS[case]).startswith("ok "), case
