"""A one-event emit seals without orjson (poetctl.stdjson) and stores exactly orjson's bytes; batches keep orjson."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import clean_env, load_samples

import poetctl.envelope as envelope_mod
from poetctl.config import Config
from poetctl.envelope import EnvelopeBuilder
from poetctl.errors import InvalidData
from poetctl.event import parse_json, stored_checksum_matches
from poetctl.schemas import SchemaRegistry

NOW = 1764441234.567891
TEXT = 'q" b\\ s/ \n\t\r\b\f \x00 \x1f \x7f \u2028\u2029 é ✓ 𝄞 \ufeff \uffff'
# Payloads the lean path must write as orjson does: escapes, non-ASCII, key order by code point,
# integer and float forms, nesting, tuples, null (the careful path's NaN check), a large payload.
LEAN_CASES: list[dict[str, Any]] = [
    {"s": "plain"},
    {"s": TEXT, TEXT: TEXT},
    {"b": 1, "a": 2, "é": 3, "Z": 4, "𝄞": 5, "\uffff": 6, "aa": 7, "": 8, "A": {"z": 0, "y": [{"x": 1, "w": 2}]}},
    {"i": [0, -1, 1, 2**53, -(2**53), 10**17, 999999999999999999, -123456789012345678]},
    {"f": [0.0, -0.0, 1.5, -2.25, 0.1, 0.2 + 0.1, 1 / 3, 123456.789, 1e15, 9999999999999998.0, 0.0001, 0.001]},
    {"b": [True, False, None], "n": None, "e": {}, "l": [], "t": ("a", (1, 2)), "s": ""},
    {"deep": [[[[[[[[[[{"k": [1]}]]]]]]]]]]},
    {"big": {f"k{i:04d}": [i, i / 7, f"v\u00e9{i}"] for i in range(400)}},
]
# Options that put more members in the envelope (sorted among them).
OPTIONS: list[dict[str, Any]] = [
    {},
    {"correlation_id": "corr-1", "causation_id": "01a228e8-5d00-70a6-907b-f4b9a25d7100", "priority": "high"},
    {"source": "src ✓", "environment": "prod\u2028", "expires_at": 1800000000.25, "schema_version": 1},
]

BUILD = """
import base64, json, sys
import poetctl.envelope as envelope_mod
from poetctl.config import Config
from poetctl.envelope import EnvelopeBuilder
from poetctl.schemas import SchemaRegistry
envelope_mod.now = lambda: {now!r}
cases = {cases!r}
out = []
for i, (payload, options) in enumerate(cases):
    builder = EnvelopeBuilder(Config(validation=False), SchemaRegistry())  # a fresh builder: its first event
    ev, _ = builder.build("system.health", payload, id="01a228e8-5d00-70a6-907b-f4b9a25d7%03d" % i, **options)
    out.append([base64.b64encode(ev.line()).decode(), ev.checksum, ev.sealed is None, "orjson" in sys.modules])
print(json.dumps(out))
"""


def _run(code: str, *args: str) -> Any:
    cp = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=clean_env({"PYTHONPATH": os.pathsep.join(sys.path)}),
        timeout=120,
        check=True,
    )
    return json.loads(cp.stdout.splitlines()[-1])


def _cases(payloads: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, o) for p in payloads for o in OPTIONS]


def _orjson_lines(cases: list[tuple[dict[str, Any], dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The same events built here, where orjson is loaded: the builder seals them with orjson (_seal)."""
    assert "orjson" in sys.modules
    monkeypatch.setattr(envelope_mod, "now", lambda: NOW)
    builder = EnvelopeBuilder(Config(validation=False), SchemaRegistry())
    out = []
    for i, (payload, options) in enumerate(cases):
        ev, _ = builder.build("system.health", payload, id=f"01a228e8-5d00-70a6-907b-f4b9a25d7{i:03d}", **options)
        out.append((ev.line(), ev.checksum, ev.sealed is None))
    return out


def test_lean_seal_writes_orjsons_exact_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without orjson loaded, a builder's first event has the same stored line and checksum as orjson's seal."""
    cases = _cases(LEAN_CASES)
    lean = _run(BUILD.format(now=NOW, cases=cases))
    fast = _orjson_lines(cases, monkeypatch)
    for (payload, options), (line64, checksum, unsealed, loaded), (line, fast_checksum, _) in zip(
        cases, lean, fast, strict=True
    ):
        where = f"{str(payload)[:60]} {options}"
        assert not loaded, f"orjson was imported by {where}"
        assert unsealed, where  # the careful path made it (compute_checksum, Event.line), not _seal
        assert base64.b64decode(line64) == line, where
        assert checksum == fast_checksum and stored_checksum_matches(line, checksum), where


def test_lean_seal_defers_to_orjson_where_json_writes_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exponent floats (json: 1e-05, orjson: 1e-5) and 19-digit integers: orjson is imported and writes them."""
    for payload in ({"f": 1e-05}, {"f": 1e16}, {"f": 5e-324, "g": 1.7976931348623157e308}, {"i": 2**63 - 1}):
        cases = _cases([payload])[:1]
        lean = _run(BUILD.format(now=NOW, cases=cases))
        fast = _orjson_lines(cases, monkeypatch)
        assert lean[0][3], payload  # orjson decided
        assert base64.b64decode(lean[0][0]) == fast[0][0] and lean[0][1] == fast[0][1]


PARSE = """
import json, sys
from poetctl.errors import InvalidData
from poetctl.event import parse_json
out = []
for text in json.loads(sys.argv[1]):
    try:
        out.append(["ok", parse_json(text.encode("utf-8", "surrogatepass"), where="x")])
    except InvalidData as exc:
        out.append(["error", str(exc)])
    out[-1].append("orjson" in sys.modules)
print(json.dumps(out))
"""
# Parsed by the standard library without orjson, and must come out as orjson's parse_json has it:
# the same value, or the same message (duplicate keys and whitespace go through surely_exact/find_inexact).
PARSE_LEAN = [
    '{"a": 1, "b": [1.5, -0.0, "x"], "c": {"d": null}}',
    '{"s": "\\u00e9\\ud834\\udd1e \\n \\" \\\\ \\/"}',
    '{"a": 1, "a": 2}',
    '{"a": {"b": 1, "b": 1}}',
    '  {"a":\t[ 1 ,2 ] }\n',
    '{"i": 999999999999999999, "j": -999999999999999999}',
    '{"f": 1.0, "g": 1E2, "h": 0.5e1}',
    "[" * 70 + "]" * 70,
]
# Where the standard library reads differently, orjson decides (and words the error).
PARSE_DEFER = [
    '{"i": 18446744073709551616}',
    '{"f": NaN}',
    '{"f": 1e999}',
    '{"s": "\\ud800"}',
    "\ufeff{}",
    '{"a": 1',
    '{"i": 9223372036854775807, "j": -9223372036854775808}',
    '{"f": 1e-7}',
]


def _parse_here(text: str) -> list[Any]:
    try:
        return ["ok", parse_json(text.encode("utf-8", "surrogatepass"), where="x")]
    except InvalidData as exc:
        return ["error", str(exc)]


@pytest.mark.parametrize("texts,lean", [(PARSE_LEAN, True), *[([t], False) for t in PARSE_DEFER]])
def test_lean_parse_matches_orjson(texts: list[str], lean: bool) -> None:
    """parse_json without orjson loaded gives orjson's value or message; what json reads otherwise goes to orjson."""
    got = _run(PARSE, json.dumps(texts))
    for text, (kind, value, loaded) in zip(texts, got, strict=True):
        assert [kind, value] == json.loads(json.dumps(_parse_here(text))), text
        assert loaded is not lean, text


EMIT_SEEDS = """
import json, sys
from poetctl.cli.fastpath import run
spool, samples = sys.argv[1], json.loads(sys.argv[2])
codes = [run(["--spool", spool, "emit", t, json.dumps(p)]) for t, p in samples]
heavy = ("orjson", "dataclasses", "jsonschema_rs")
print(json.dumps({"codes": codes, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""


def test_one_event_emit_of_seed_types_imports_no_orjson_dataclasses_or_jsonschema(spool: Path) -> None:
    """One-event `emit` of each seed type: no orjson, dataclasses or jsonschema_rs imported; files as orjson writes."""
    samples = [(t, p["valid"][0]) for t, p in sorted(load_samples().items())]
    out = _run(EMIT_SEEDS, str(spool), json.dumps(samples))
    assert out["codes"] == [0] * len(samples)
    assert out["loaded"] == []
    files = sorted((spool / "events" / "pending").rglob("*.json"))
    assert len(files) == len(samples)
    for f in files:
        line = f.read_bytes()
        doc = orjson.loads(line)
        assert line == orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE), f
        assert stored_checksum_matches(line, doc["checksum"]), f


LOADED_AFTER = """
import atexit, runpy, sys
atexit.register(lambda: print('{"orjson": %s}' % str("orjson" in sys.modules).lower()))
sys.argv = ["poetctl", *sys.argv[1:]]
runpy.run_module("poetctl", run_name="__main__", alter_sys=True)
"""


def test_batch_emit_and_library_use_orjson(spool: Path, tmp_path: Path) -> None:
    """`emit --batch` and a library router's second event seal with orjson (the fast path), not the lean one."""
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"service": "a", "status": "healthy"}) + "\n")
    out = _run(LOADED_AFTER, "--spool", str(spool), "emit", "--batch", str(batch), "--type", "system.health")
    assert out == {"orjson": True}
    lib = """
import json, sys
from poetctl.router import EventRouter
router = EventRouter(spool=sys.argv[1])
first = router.emit("system.health", {"service": "a", "status": "healthy"})
before = "orjson" in sys.modules
second, _ = router.build("system.health", {"service": "b", "status": "healthy"})
print(json.dumps([before, "orjson" in sys.modules, second.sealed is not None]))
"""
    assert _run(lib, str(spool)) == [False, True, True]


SINGLE = """
import atexit, runpy, sys
heavy = ("orjson", "dataclasses", "jsonschema_rs", "ctypes", "random", "_hashlib", "hashlib", "typing")
atexit.register(lambda: print(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
sys.argv = ["poetctl", *sys.argv[1:]]
runpy.run_module("poetctl", run_name="__main__", alter_sys=True)
"""


def test_python_m_poetctl_emit_loads_none_of_the_heavy_modules(spool: Path) -> None:
    """`python -m poetctl emit` of one event loads none of the heavy modules (typing included)."""
    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            SINGLE,
            "--spool",
            str(spool),
            "emit",
            "system.health",
            '{"service":"a","status":"healthy"}',
        ],
        capture_output=True,
        text=True,
        env=clean_env({"PYTHONPATH": os.pathsep.join(sys.path)}),
        timeout=120,
        check=True,
    )
    assert cp.stdout.splitlines()[-1] == "[]", cp.stdout
    (f,) = (spool / "events" / "pending").rglob("*.json")
    doc = orjson.loads(f.read_bytes())
    assert stored_checksum_matches(f.read_bytes(), doc["checksum"])


def test_first_checksums_use_the_plain_sha256_then_hashlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first _PLAIN_HASHES checksums come from the standard library's own SHA-256, the rest from hashlib's."""
    import hashlib

    import poetctl.event as event_mod

    monkeypatch.setattr(event_mod, "_sha256", event_mod._first_sha256)
    monkeypatch.setattr(event_mod, "_plain_left", event_mod._PLAIN_HASHES)
    for i in range(event_mod._PLAIN_HASHES + 2):
        data = b"x" * i * 1000
        assert event_mod._sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        assert (event_mod._sha256 is hashlib.sha256) == (i >= event_mod._PLAIN_HASHES)
