"""Numbers and keys are kept exactly or refused: duplicate keys, integers beyond 64 bits and
NaN/Infinity exit 65 (InvalidData in the library) naming the JSON path, on every input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import files_in

from poetctl import EventRouter
from poetctl.errors import InvalidData
from poetctl.event import Event, parse_json
from poetctl.strictjson import INT_MAX, INT_MIN, find_inexact, surely_exact

EX_DATAERR = 65
HEALTH = '{"service": "s", "status": "healthy", "details": %s}'

# name -> (payload JSON text, JSON path of the problem inside the payload, words in the message)
BAD_PAYLOADS: dict[str, tuple[str, str, str]] = {
    "duplicate-top-key": ('{"service": "s", "status": "healthy", "service": "t"}', "$", 'duplicate key "service"'),
    "duplicate-nested-key": (HEALTH % '{"a": [1, {"b": 1, "b": 2}]}', "$.details.a[1]", 'duplicate key "b"'),
    "duplicate-spelled-as-escape": (HEALTH % '{"k": 1, "\\u006b": 2}', "$.details", 'duplicate key "k"'),
    "duplicate-colon-key-escaped": (HEALTH % '{"a:b": 1, "a\\u003ab": 2}', "$.details", 'duplicate key "a:b"'),
    "integer-2**64": (HEALTH % '{"n": 18446744073709551616}', "$.details.n", "does not fit in 64 bits"),
    "integer-below-2**63": (HEALTH % '{"n": -9223372036854775809}', "$.details.n", "does not fit in 64 bits"),
    "integer-30-digits": (HEALTH % '{"n": [123456789012345678901234567890]}', "$.details.n[0]", "64 bits"),
    "integer-5000-digits": (HEALTH % ('{"n": %s}' % ("9" * 5000)), "$.details.n", "64 bits"),
}


def _payload_path(path: str) -> str:
    return "$.payload" + path[1:]


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
@pytest.mark.parametrize("how", ["file", "stdin", "inline"])
def test_emit_refuses_inexact_payload(case: str, how: str, run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """emit FILE, emit - and emit TYPE '{...}' exit 65 naming the input and the JSON path; nothing is written."""
    text, path, words = BAD_PAYLOADS[case]
    if how == "inline":
        r = run_cli("--spool", spool, "emit", "system.health", text)
        name = "<argument>"
    elif how == "file":
        (tmp_path / "p.json").write_text(text)
        r = run_cli("--spool", spool, "emit", "system.health", tmp_path / "p.json")
        name = str(tmp_path / "p.json")
    else:
        r = run_cli("--spool", spool, "emit", "system.health", "-", input=text)
        name = "<stdin>"
    assert r.returncode == EX_DATAERR, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{name}: {path}: " in r.stderr and words in r.stderr, r.stderr
    assert files_in(spool / "events" / "pending") == []


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_batch_and_validate_refuse_inexact_lines(case: str, run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """emit --batch (bare payloads and envelopes) and validate name FILE:LINE and the JSON path; nothing is written."""
    text, path, words = BAD_PAYLOADS[case]
    good = '{"service": "s", "status": "healthy"}'
    envelope = f'{{"type": "system.health", "payload": {text}}}'
    batch = tmp_path / "b.jsonl"
    batch.write_text(f"{good}\n{text}\n")
    r = run_cli("--spool", spool, "emit", "--batch", batch, "--type", "system.health")
    assert r.returncode == EX_DATAERR, r.stderr
    assert f"{batch}:2: {path}: " in r.stderr and words in r.stderr, r.stderr
    batch.write_text(f"{envelope}\n")
    r = run_cli("--spool", spool, "emit", "--batch", batch)
    assert r.returncode == EX_DATAERR, r.stderr
    assert f"{batch}:1: {_payload_path(path)}: " in r.stderr, r.stderr
    assert files_in(spool / "events" / "pending") == []
    r = run_cli("validate", batch)
    assert r.returncode == EX_DATAERR, r.stdout + r.stderr
    assert _payload_path(path) in r.stdout + r.stderr and words in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_duplicate_envelope_key_in_batch_is_refused(run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """A batch envelope naming its type twice is refused, not resolved last-wins."""
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        '{"type": "drift.detected", "type": "system.health", "payload": {"service": "s", "status": "healthy"}}\n'
    )
    r = run_cli("--spool", spool, "emit", "--batch", batch)
    assert r.returncode == EX_DATAERR, r.stderr
    assert f'{batch}:1: $: duplicate key "type"' in r.stderr, r.stderr
    assert files_in(spool / "events" / "pending") == []


@pytest.mark.parametrize("n", [INT_MAX, INT_MIN, 2**63, -1, 0])
def test_integers_within_64_bits_are_stored_exactly(n: int, run_cli: Any, spool: Path) -> None:
    """The 64-bit boundaries (-2**63 and 2**64-1) are accepted and written digit for digit."""
    r = run_cli("--spool", spool, "emit", "system.health", "-", input=HEALTH % f'{{"n": {n}}}')
    assert r.returncode == 0, r.stderr
    raw = (spool / "events" / "pending" / f"{r.stdout.strip()}.json").read_text()
    assert f'"n":{n}' in raw
    assert json.loads(raw)["payload"]["details"]["n"] == n


LIBRARY_BAD: dict[str, tuple[Any, str, str]] = {
    "nan": ({"x": math.nan}, "$.payload.details.x", "NaN is not a JSON number"),
    "infinity": ({"x": [1.0, math.inf]}, "$.payload.details.x[1]", "Infinity is not a JSON number"),
    "minus-infinity": ({"y": {"x": -math.inf}}, "$.payload.details.y.x", "-Infinity is not a JSON number"),
    "2**64": ({"x": 2**64}, "$.payload.details.x", "does not fit in 64 bits"),
    "-2**63-1": ({"x": -(2**63) - 1}, "$.payload.details.x", "does not fit in 64 bits"),
    "int-key": ({"x": {1: "a"}}, "$.payload.details.x", "key 1 is not a string"),
    "tuple-with-nan": ({"x": (1, math.nan)}, "$.payload.details.x[1]", "NaN"),
}


def _health(details: Any) -> dict[str, Any]:
    return {"service": "s", "status": "healthy", "details": details}


@pytest.mark.parametrize("case", sorted(LIBRARY_BAD))
def test_library_refuses_values_json_cannot_carry(case: str, router: EventRouter, spool: Path) -> None:
    """router.emit and emit_many (pairs, envelopes, Events) raise InvalidData naming the path; nothing is written."""
    details, path, words = LIBRARY_BAD[case]
    with pytest.raises(InvalidData) as info:
        router.emit("system.health", _health(details))
    assert f"{path}: " in str(info.value) and words in str(info.value), str(info.value)
    with pytest.raises(InvalidData) as info:
        router.emit_many(
            [("system.health", {"service": "s", "status": "healthy"}), ("system.health", _health(details))]
        )
    assert str(info.value).startswith(f"item 2: {path}: "), str(info.value)
    with pytest.raises(InvalidData) as info:
        router.emit_many([{"type": "system.health", "payload": _health(details)}])
    assert str(info.value).startswith(f"item 1: {path}: "), str(info.value)
    ev, _ = router.build("system.health", {"service": "s", "status": "healthy"})
    ev.payload = _health(details)
    for sealed in (False, True):
        if sealed:
            ev.checksum = None
            try:
                ev.seal()
            except InvalidData:
                continue  # sealing refuses it already
        with pytest.raises(InvalidData) as info:
            router.emit_many([ev])
        assert path in str(info.value) and words in str(info.value), str(info.value)
    assert files_in(spool / "events" / "pending") == []
    assert files_in(spool / "events" / "tmp") == []


def test_event_with_nan_in_metadata_is_not_sealed_as_null() -> None:
    """compute_checksum (seal) refuses NaN anywhere in the envelope rather than hash it as null."""
    ev = Event("e1", "system.health", "s", 1795936418.0, "poet/system/health", {"service": "s", "status": "ok"})
    ev.metadata = {"version": "1.0", "environment": "dev", "service": "s", "score": math.nan}
    with pytest.raises(InvalidData) as info:
        ev.seal()
    assert "$.metadata.score: NaN" in str(info.value)


# -- the cheap test behind it: surely_exact is sound ----------------------------------------------


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.randrange(-(10**6), 10**6)
    if kind == 1:
        return rng.choice([1e5, 1.5e-7, 1e16, 123.25, -0.0, 9007199254740993.0, 1e300])
    if kind == 2:
        return rng.choice(["", "a:b", "x", "é:ü", "\u001b", 'q"uote', "\\u003a", "e+e", "12345678901234567890"])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice([INT_MAX, INT_MIN, 2**63])
    if kind == 5:
        return rng.randrange(10**18, 10**19)
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "b", "c:d", "é", "e+"]) + str(i): _random_value(rng, depth + 1) for i in range(4)}


_ESCAPES = {":": "\\u003a", "a": "\\u0061", "é": "\\u00e9", "+": "\\u002b"}


def _spell_key(rng: random.Random, key: str) -> str:
    """A JSON string for ``key``, some characters written as \\u escapes."""
    return '"' + "".join(_ESCAPES[c] if c in _ESCAPES and rng.random() < 0.3 else c for c in key) + '"'


def _spell(rng: random.Random, value: Any) -> str:
    """JSON text for ``value``, spelled variously: escapes, whitespace, exponents, duplicate keys, wide integers."""
    ws = rng.choice(["", " ", "\n  "])
    if isinstance(value, dict):
        members = []
        for k, v in value.items():
            members.append(f"{_spell_key(rng, k)}{ws}:{ws}{_spell(rng, v)}")
            if rng.random() < 0.05:  # a duplicate, sometimes spelled differently
                members.append(f"{_spell_key(rng, k)}{ws}:{ws}{_spell(rng, v)}")
        rng.shuffle(members)
        return "{" + ws + ("," + ws).join(members) + ws + "}"
    if isinstance(value, list):
        return "[" + ws + ("," + ws).join(_spell(rng, v) for v in value) + ws + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        if rng.random() < 0.03:
            return rng.choice(["18446744073709551616", "-9223372036854775809", "1" + "0" * 25])
        return str(value)
    if isinstance(value, float):
        return rng.choice([repr(value), f"{value:e}", f"{value:E}"]) if math.isfinite(value) else "0"
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def test_surely_exact_never_vouches_for_an_inexact_document() -> None:
    """Over thousands of variously spelled documents, surely_exact is False whenever find_inexact finds a problem."""
    rng = random.Random(9)
    inexact = vouched = 0
    for _ in range(4000):
        text = _spell(rng, {"k": _random_value(rng, 0), "p": _random_value(rng, 0)})
        data = text.encode()
        obj = orjson.loads(data)
        problem = find_inexact(data)
        exact = surely_exact(data, orjson.dumps(obj, option=orjson.OPT_SORT_KEYS))
        if problem is not None:
            inexact += 1
            assert not exact, (text, problem)
        elif exact:
            vouched += 1
    assert inexact > 100 and vouched > 1000  # both kinds were really exercised


def test_orjson_writes_every_float_from_1e16_up_in_exponent_form() -> None:
    """The property surely_exact relies on: floats of magnitude >= 1e16 (all over-wide integers) print with 'e+'."""
    rng = random.Random(3)
    values = [float(2**63), float(2**64), -float(2**63 + 1), 1e16, -1e16, 1.7976931348623157e308]
    values += [rng.choice((1, -1)) * 10 ** rng.uniform(16, 308) for _ in range(20000)]
    assert [v for v in values if b"e+" not in orjson.dumps(v)] == []
    assert orjson.loads(b"18446744073709551616") == float(2**64)  # read as a float...
    assert orjson.loads(b"18446744073709551615") == INT_MAX  # ...while the 64-bit range stays int


def test_parse_json_names_the_first_problem_in_document_order() -> None:
    """parse_json reports the duplicate or wide integer that comes first in the text, with where and path."""
    with pytest.raises(InvalidData) as info:
        parse_json(b'{"a": {"n": 99999999999999999999}, "b": {"x": 1, "x": 2}}', where="in.json")
    assert str(info.value).startswith("in.json: $.a.n: integer 99999999999999999999 does not fit in 64 bits")
    with pytest.raises(InvalidData) as info:
        parse_json(b'{"a": {"x": 1, "x": 2}, "b": 99999999999999999999}', where="in.json")
    assert str(info.value).startswith('in.json: $.a: duplicate key "x"')
