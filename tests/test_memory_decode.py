"""The memory/NATS decode: its one-parse path accepts exactly what the step-by-step check accepts."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from poetctl.backends.memory import entries
from poetctl.errors import InvalidData
from poetctl.event import compute_checksum

EID = "0190a5b2-3c4d-7e8f-9a0b-1c2d3e4f5a6b"


def sealed(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": EID, "type": "svc.up", "source": "t", "timestamp": 1.5, "topic": "svc"}
    d["payload"] = {"service": "a:b", "n": 3, "none": None}
    d.update(extra)
    d["checksum"] = compute_checksum(d)
    return d


def verdict(fn: Any, data: bytes, eid: str = EID) -> str:
    try:
        return "ok " + fn(data, eid).id
    except InvalidData as exc:
        return exc.message


GOOD = orjson.dumps(sealed())


CASES = {
    "sound": GOOD,
    "sound, colon escaped in a string": GOOD.replace(b'"a:b"', b'"a\\u003ab"'),
    "checksum wrong": GOOD.replace(b'"n":3', b'"n":4'),
    "checksum missing": orjson.dumps({k: v for k, v in sealed().items() if k != "checksum"}),
    "checksum not a string": orjson.dumps({**sealed(), "checksum": 7}),
    "duplicate key": GOOD.replace(b'"n":3', b'"n":3,"n":3'),
    "duplicate checksum": GOOD[:-1] + b',"checksum":"x"}',
    "integer beyond 64 bits": orjson.dumps(sealed()).replace(b'"n":3', b'"n":36893488147419103232'),
    "not json": b"{nope",
    "not an object": b"[1,2]",
    "field missing": orjson.dumps({k: v for k, v in sealed().items() if k != "topic"}),
    "nested too deep": json.dumps(sealed(payload={"x": json.loads("[" * 70 + "]" * 70)})).encode(),
    "many brackets, shallow": orjson.dumps(sealed(payload={"l": [[1]] * 40})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_same_verdict_as_checked(case: str) -> None:
    """decode gives the checked path's verdict and message for sound, damaged and tricky bytes."""
    data = CASES[case]
    assert verdict(entries.decode, data) == verdict(entries._decode_checked, data)


def test_verdicts_are_the_expected_ones() -> None:
    """The cases really exercise both outcomes: sound bytes decode, damaged ones name the reason."""
    assert verdict(entries.decode, GOOD) == "ok " + EID
    assert verdict(entries.decode, CASES["sound, colon escaped in a string"]) == "ok " + EID
    assert verdict(entries.decode, CASES["many brackets, shallow"]) == "ok " + EID
    assert verdict(entries.decode, CASES["checksum wrong"]).startswith("bad_checksum: ")
    assert verdict(entries.decode, CASES["duplicate key"]).startswith("bad_json: ")
    assert verdict(entries.decode, CASES["integer beyond 64 bits"]).startswith("bad_json: ")
    assert verdict(entries.decode, CASES["nested too deep"]).startswith("bad_json: ")
    assert verdict(entries.decode, CASES["field missing"]).startswith("bad_envelope: ")
    assert verdict(entries.decode, GOOD, "another-id").startswith("wrong_name: ")
