"""The pre-validator (poetctl.schemaproof): never "valid" where jsonschema-rs says invalid, and useful on the seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_env, load_samples

from poetctl.schemaproof import prover
from poetctl.schemas import PROOF_BUDGET, SchemaRegistry, builtin_dir, fast_validator

SAMPLES = load_samples()
SCHEMA_FILES = sorted(builtin_dir().glob("*/*.json"))


def _rs_valid(validator: Any, payload: Any) -> bool:
    try:
        return bool(validator.is_valid(payload))
    except (ValueError, TypeError, OverflowError):
        return False


# Replacement values: every JSON type, bounds, odd strings and values that are not JSON at all.
ODD: list[Any] = [
    "x", "", "a" * 300, "\x01", "ok\n", "\n", "\ud800", "é", "ÿ\u2028", "🙂",
    0, -1, 1, 2, 100, 1.5, -0.5, 0.0, -0.0, 1e300, 2**53 + 1, 2**63, -(2**63) - 1, 2**64,
    float("nan"), float("inf"), True, False, None,
    [], ["x"], [1, "x"], {}, {"a": 1}, {1: 2}, ("x",), object(),
]  # fmt: skip


def _string_variants(s: str) -> list[str]:
    return [s + "!", s + "\n", "\n" + s, s.upper(), s * 9, s[:-1], s + " ", s + "é", s + "\x00", s[:1]]


def _number_variants(n: float) -> list[Any]:
    return [n + 1, n - 1, -n, n * 1000, n + 0.5, n - 0.5, float(n), n * 1e-9]


def mutations(value: Any) -> Iterator[Any]:
    """Payloads one change away from ``value``, at every depth: replaced, dropped and added members."""
    yield from ODD
    if isinstance(value, str):
        yield from _string_variants(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield from _number_variants(value)
    elif isinstance(value, dict):
        for k in value:
            yield {kk: vv for kk, vv in value.items() if kk != k}
            for m in mutations(value[k]):
                yield {**value, k: m}
        yield {**value, "zz_extra": 1}
        yield {**value, 5: 1}
        yield dict(reversed(list(value.items())))
    elif isinstance(value, list):
        yield value + value
        yield value[:-1]
        for i, item in enumerate(value):
            for m in mutations(item):
                yield [*value[:i], m, *value[i + 1 :]]


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.parent.name)
def test_prover_never_claims_valid_where_jsonschema_rs_refuses(path: Path) -> None:
    """Differential: over every seed schema and one-change mutations of its samples, proven implies valid."""
    schema = json.loads(path.read_text())
    prove = prover(schema)
    assert prove is not None, f"{path}: the pre-validator should support every seed schema"
    rs = fast_validator(schema)
    samples = SAMPLES[path.parent.name]
    cases = list(samples["valid"]) + [c["payload"] for c in samples["invalid"]]
    proven = refused = 0
    for base in cases:
        for payload in [base, *mutations(base)]:
            if prove(payload):
                proven += 1
                assert _rs_valid(rs, payload), f"{path.parent.name}: proven valid but jsonschema-rs refuses {payload!r}"
            elif _rs_valid(rs, payload):
                refused += 1  # allowed (jsonschema-rs decides), counted to see the prover is not trivially False
    assert proven > len(cases), "mutations that keep a payload valid should be proven too"


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_seed_samples_are_proven_valid(event_type: str) -> None:
    """Every valid seed sample is proven valid (else the pre-validator saves nothing), every invalid one not."""
    path = builtin_dir() / event_type / "1.json"
    prove = prover(json.loads(path.read_text()))
    assert prove is not None
    for payload in SAMPLES[event_type]["valid"]:
        assert prove(payload), payload
    for case in SAMPLES[event_type]["invalid"]:
        assert not prove(case["payload"]), case["why"]


UNSUPPORTED = [
    {"$ref": "#/$defs/x", "$defs": {"x": {}}},
    {"type": "string", "format": "email"},
    {"patternProperties": {"^a": {"type": "string"}}},
    {"allOf": [{"type": "string"}]},
    {"type": "number", "multipleOf": 2},
    {"$schema": "http://json-schema.org/draft-04/schema", "type": "number", "minimum": 0, "exclusiveMinimum": True},
    {"$schema": "http://json-schema.org/draft-07/schema", "type": "string"},
    {"items": [{"type": "string"}]},
    {"type": "strng"},
    {"type": []},
    {"enum": []},
    {"enum": [1, 2]},
    {"const": 1},
    {"minLength": -1},
    {"minLength": 1.0},
    {"required": ["a", "a"]},
    {"uniqueItems": True},
    {"properties": {"a": {"type": "string", "unknownKeyword": 1}}},
    {"title": 5},
    {"$id": "not a url"},
    {"minimum": 2**60},
]
PATTERNS = [
    "^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$",
    "^[a-z][a-z0-9_]{0,63}$",
    "^sha256:[0-9a-f]{64}$",
    "^[^\\u0000-\\u001f]+$",
    "^[A-Za-z0-9_-]{1,64}$",
    "^a\\.b$",
    "^(ab|cd)x?$",
    "^(?:xy|z)[a-z]{0,3}$",
    "^(ab|cd){2}x?$",  # a quantified choice: refused
    "^(?:a|aa)+$",  # exponential backtracking in Python's re: refused
    "^[a-z]+$",
    "^a*b*$",  # two unbounded quantifiers: refused
    "^(a+)+$",  # nested quantifiers: refused
    "^a|b$",  # top-level alternation: refused
    "abc",  # not anchored: refused
    "^.*$",  # a dot: refused
    "^\\d+$",  # a class escape: refused
    "^[a--b]$",  # a class difference in Rust: refused
    "^[[:alpha:]]$",  # a POSIX class: refused
    "^a$\\n",
    "^a\\$",
    "^a{3,1}$",
]
STRINGS = ["", "a", "ab", "abx", "cd", "xyabc", "zzzzz", "a" * 30 + "b",
           "a.b", "axb", "abab", "ababx", "cdab", "x", "xyxy", "aab", "abc", "a\n", "\na", "é",
           "🙂", "A_b-1", "1.0+x", "\x1f", "\x7f",
           "sha256:" + "0" * 64, "sha256:" + "0" * 63, "z" * 65, "aaa", "b"]  # fmt: skip


@pytest.mark.parametrize("schema", UNSUPPORTED, ids=lambda s: json.dumps(s)[:40])
def test_unsupported_schemas_get_no_prover(schema: dict[str, Any]) -> None:
    """A keyword outside the subset, another draft or a doubtful keyword value: no prover, jsonschema-rs decides."""
    assert prover(schema) is None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_agree_with_jsonschema_rs(pattern: str) -> None:
    """A supported pattern compiles in jsonschema-rs too, and proven strings match there as well."""
    schema = {"type": "string", "pattern": pattern}
    prove = prover(schema)
    if prove is None:
        return
    rs = fast_validator(schema)  # raises if jsonschema-rs refuses the pattern the prover took
    for s in STRINGS:
        if prove(s):
            assert _rs_valid(rs, s), (pattern, s)


def test_pattern_subset_refusals() -> None:
    """Patterns whose semantics or backtracking the prover cannot vouch for get no prover."""
    refused = {p for p in PATTERNS if prover({"pattern": p}) is None}
    assert refused == {
        "^a*b*$", "^(a+)+$", "^a|b$", "abc", "^.*$", "^\\d+$", "^[a--b]$", "^[[:alpha:]]$", "^a$\\n", "^a\\$",
        "^a{3,1}$", "^(ab|cd){2}x?$", "^(?:a|aa)+$",
    }  # fmt: skip


def test_registry_uses_the_proof_then_compiles_after_the_budget() -> None:
    """validate_payload accepts proven payloads without compiling; past the budget it compiles (long runs)."""
    reg = SchemaRegistry()
    payload = SAMPLES["system.health"]["valid"][0]
    reg.validate_payload("system.health", payload)
    assert "system.health/1" not in reg._cache
    for _ in range(PROOF_BUDGET):
        reg.validate_payload("system.health", payload)
    assert "system.health/1" in reg._cache


def test_registry_invalid_payload_message_comes_from_jsonschema_rs() -> None:
    """An invalid payload is still worded by jsonschema-rs (the prover only ever says valid)."""
    from poetctl.errors import InvalidData

    reg = SchemaRegistry()
    with pytest.raises(InvalidData) as exc:
        reg.validate_payload("system.health", {"service": "a", "status": "fine"}, prefix="$.payload")
    assert '$.payload.status: "fine" is not one of ["healthy","degraded","unhealthy"]' in str(exc.value)


def test_payload_validator_is_lazy_and_exact() -> None:
    """payload_validator's callable proves what it can, and defers to jsonschema-rs for the rest."""
    reg = SchemaRegistry()
    is_valid = reg.payload_validator("system.health", 1)
    assert is_valid({"service": "a", "status": "healthy"})
    assert "system.health/1" not in reg._cache
    assert not is_valid({"service": "a", "status": "fine"})
    assert "system.health/1" in reg._cache
    assert is_valid({"service": "a", "status": "healthy"})


EMIT_ALL = """
import json, sys
from poetctl.cli.fastpath import run
spool, samples = sys.argv[1], json.loads(sys.argv[2])
codes = [run(["--spool", spool, "emit", t, json.dumps(p)]) for t, p in samples]
print(json.dumps({"codes": codes, "loaded": sorted(m for m in sys.modules if m.startswith("jsonschema"))}))
"""


def test_emit_of_seed_events_does_not_import_jsonschema_rs(tmp_path: Path, spool: Path) -> None:
    """`poetctl emit TYPE PAYLOAD` of every seed sample (fast path, one process) never imports jsonschema-rs."""
    samples = [(t, SAMPLES[t]["valid"][0]) for t in sorted(SAMPLES)]
    cp = subprocess.run(
        [sys.executable, "-c", EMIT_ALL, str(spool), json.dumps(samples)],
        capture_output=True,
        text=True,
        env=clean_env({"PYTHONPATH": os.pathsep.join(sys.path)}),
        timeout=120,
        check=True,
    )
    out = json.loads(cp.stdout.splitlines()[-1])
    assert out["codes"] == [0] * len(samples), cp.stderr
    assert out["loaded"] == []
