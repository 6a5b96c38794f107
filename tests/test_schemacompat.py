"""Schema compatibility (Confluent's backward/forward/full): one row per rule, and the check-compat command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from poetctl.schemacompat import BACKWARD, BREAKING, FORWARD, FULL, check

BASE: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "method": {"type": "string", "enum": ["a", "b"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 0, "maxItems": 5},
    },
    "additionalProperties": False,
}


def changed(**edits: Any) -> dict[str, Any]:
    """BASE with dotted-path edits applied (a value of ... deletes the key)."""
    s = json.loads(json.dumps(BASE))
    for dotted, value in edits.items():
        *head, last = dotted.split("__")
        node = s
        for k in head:
            node = node[k]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return s


OPEN = changed(additionalProperties=...)

# (case id, old, new, expected level, expected rule, the direction that rule breaks)
RULES: list[tuple[str, dict[str, Any], dict[str, Any], str, str, str]] = [
    ("required added", BASE, changed(required=["name", "score"]), FORWARD, "required_added", BACKWARD),
    ("required removed", BASE, changed(required=[]), BACKWARD, "required_removed", FORWARD),
    (
        "property removed from a closed object",
        BASE,
        changed(properties__method=...),
        FORWARD,
        "property_removed",
        BACKWARD,
    ),
    (
        "unconstrained property removed from an open object",
        {**OPEN, "properties": {**OPEN["properties"], "free": {}}},
        OPEN,
        FULL,
        "",
        "",
    ),
    (
        "constrained property removed from an open object",
        OPEN,
        {**OPEN, "properties": {k: v for k, v in OPEN["properties"].items() if k != "method"}},
        BACKWARD,
        "property_removed",
        FORWARD,
    ),
    (
        "property added to a closed object",
        BASE,
        changed(properties__extra={"type": "string"}),
        BACKWARD,
        "property_added",
        FORWARD,
    ),
    (
        "property added to an open object",
        OPEN,
        {**OPEN, "properties": {**OPEN["properties"], "extra": {"type": "string"}}},
        FORWARD,
        "property_added",
        BACKWARD,
    ),
    (
        "type narrowed",
        BASE,
        changed(properties__score={"type": "integer", "minimum": 0, "maximum": 1}),
        FORWARD,
        "type_narrowed",
        BACKWARD,
    ),
    (
        "type widened",
        BASE,
        changed(properties__name={"type": ["string", "null"], "minLength": 1, "maxLength": 10}),
        BACKWARD,
        "type_widened",
        FORWARD,
    ),
    (
        "enum value added",
        BASE,
        changed(properties__method={"type": "string", "enum": ["a", "b", "c"]}),
        BACKWARD,
        "enum_value_added",
        FORWARD,
    ),
    (
        "enum value removed",
        BASE,
        changed(properties__method={"type": "string", "enum": ["a"]}),
        FORWARD,
        "enum_value_removed",
        BACKWARD,
    ),
    (
        "enum introduced",
        BASE,
        changed(properties__name={"type": "string", "minLength": 1, "maxLength": 10, "enum": ["x"]}),
        FORWARD,
        "enum_added",
        BACKWARD,
    ),
    ("additionalProperties closed", OPEN, BASE, FORWARD, "additional_properties_closed", BACKWARD),
    ("additionalProperties opened", BASE, OPEN, BACKWARD, "additional_properties_opened", FORWARD),
    (
        "minimum raised",
        BASE,
        changed(properties__score={"type": "number", "minimum": 0.5, "maximum": 1}),
        FORWARD,
        "minimum_tightened",
        BACKWARD,
    ),
    (
        "maximum lowered",
        BASE,
        changed(properties__score={"type": "number", "minimum": 0, "maximum": 0.5}),
        FORWARD,
        "maximum_tightened",
        BACKWARD,
    ),
    (
        "maximum raised",
        BASE,
        changed(properties__score={"type": "number", "minimum": 0, "maximum": 2}),
        BACKWARD,
        "maximum_loosened",
        FORWARD,
    ),
    (
        "minimum removed",
        BASE,
        changed(properties__score={"type": "number", "maximum": 1}),
        BACKWARD,
        "minimum_loosened",
        FORWARD,
    ),
    (
        "minLength raised",
        BASE,
        changed(properties__name={"type": "string", "minLength": 2, "maxLength": 10}),
        FORWARD,
        "minLength_tightened",
        BACKWARD,
    ),
    (
        "maxLength lowered",
        BASE,
        changed(properties__name={"type": "string", "minLength": 1, "maxLength": 5}),
        FORWARD,
        "maxLength_tightened",
        BACKWARD,
    ),
    (
        "maxLength added",
        changed(properties__name={"type": "string"}),
        changed(properties__name={"type": "string", "maxLength": 5}),
        FORWARD,
        "maxLength_tightened",
        BACKWARD,
    ),
    (
        "maxItems lowered (inside an array)",
        BASE,
        changed(properties__tags={"type": "array", "items": {"type": "string"}, "minItems": 0, "maxItems": 2}),
        FORWARD,
        "maxItems_tightened",
        BACKWARD,
    ),
    (
        "items type narrowed",
        changed(properties__tags={"type": "array", "items": {"type": ["string", "integer"]}}),
        changed(properties__tags={"type": "array", "items": {"type": "string"}}),
        FORWARD,
        "type_narrowed",
        BACKWARD,
    ),
    (
        "exclusiveMinimum added",
        BASE,
        changed(properties__score={"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": 0}),
        FORWARD,
        "exclusiveMinimum_tightened",
        BACKWARD,
    ),
    (
        "pattern changed (not comparable)",
        BASE,
        changed(properties__name={"type": "string", "minLength": 1, "maxLength": 10, "pattern": "^x"}),
        BREAKING,
        "keyword_changed",
        BACKWARD,
    ),
    (
        "description only",
        BASE,
        changed(properties__name={"type": "string", "minLength": 1, "maxLength": 10, "description": "who"}),
        FULL,
        "",
        "",
    ),
    ("identical", BASE, BASE, FULL, "", ""),
    (
        "both ways at once",
        BASE,
        changed(required=["name", "score"], properties__method={"type": "string", "enum": ["a", "b", "c"]}),
        BREAKING,
        "enum_value_added",
        FORWARD,
    ),
]


@pytest.mark.parametrize(("case", "old", "new", "level", "rule", "breaks"), RULES, ids=[r[0] for r in RULES])
def test_rule(case: str, old: dict[str, Any], new: dict[str, Any], level: str, rule: str, breaks: str) -> None:
    """Each schema change gets Confluent's level and names its rule and the direction it breaks."""
    verdict = check(old, new)
    assert verdict.level == level, verdict.reasons
    if rule:
        assert any(r.rule == rule and r.breaks == breaks for r in verdict.reasons), verdict.reasons
    else:
        assert verdict.reasons == ()


# Payloads that witness each verdict: a level claiming compatibility must hold on real data.
WITNESSES = [
    {"name": "n"},
    {"name": "n", "score": 0.5},
    {"name": "n", "score": 1},
    {"name": "n", "score": 0.25, "method": "a"},
    {"name": "n", "method": "c"},
    {"name": "nnnnnnnn"},
    {"name": None},
    {"name": "n", "extra": "x"},
    {"name": "n", "tags": ["a", "b", "c"]},
    {"name": "n", "tags": [1]},
    {"name": "n", "score": 0},
    {"name": "n", "score": 1.5},
    {},
]


@pytest.mark.parametrize(("case", "old", "new", "level", "rule", "breaks"), RULES, ids=[r[0] for r in RULES])
def test_a_claimed_direction_holds_on_payloads(
    case: str, old: dict[str, Any], new: dict[str, Any], level: str, rule: str, breaks: str
) -> None:
    """When the verdict says backward (forward), no witness valid under OLD (NEW) is refused by the other."""
    vo, vn = Draft202012Validator(old), Draft202012Validator(new)
    for p in WITNESSES:
        if level in (BACKWARD, FULL) and vo.is_valid(p):
            assert vn.is_valid(p), p
        if level in (FORWARD, FULL) and vn.is_valid(p):
            assert vo.is_valid(p), p


def test_satisfies_follows_confluent_modes() -> None:
    """A backward change passes --require backward and none, fails forward and full."""
    v = check(BASE, changed(required=[]))
    assert v.level == BACKWARD
    assert [m for m in ("backward", "forward", "full", "none") if v.satisfies(m)] == ["backward", "none"]


def _write(p: Path, schema: dict[str, Any]) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}))
    return p


def test_cli_two_files(run_cli: Any, tmp_path: Path) -> None:
    """check-compat OLD.json NEW.json prints the level and each reason; exit 1 when --require is not met."""
    old = _write(tmp_path / "old.json", BASE)
    new = _write(tmp_path / "new.json", changed(properties__method={"type": "string", "enum": ["a", "b", "c"]}))
    r = run_cli("schemas", "check-compat", old, new)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("backward:")
    assert "breaks forward: enum_value_added at $.method" in r.stdout
    r = run_cli("schemas", "check-compat", old, new, "--require", "full")
    assert r.returncode == 1
    assert "not full-compatible" in r.stdout
    r = run_cli("schemas", "check-compat", old, new, "-o", "json")
    doc = json.loads(r.stdout)
    assert doc["level"] == "backward" and doc["compatible"] is True
    assert [x["rule"] for x in doc["reasons"]] == ["enum_value_added"]


def test_cli_type_and_versions(run_cli: Any, tmp_path: Path) -> None:
    """check-compat TYPE 1 2 compares two registered versions; a breaking change exits 1."""
    d = tmp_path / "s"
    _write(d / "custom.thing" / "1.json", BASE)
    _write(d / "custom.thing" / "2.json", changed(required=["name", "score"]))
    env = {"POET_SCHEMA_PATH": str(d)}
    r = run_cli("schemas", "check-compat", "custom.thing", "1", "2", env=env)
    assert r.returncode == 1
    assert r.stdout.startswith("forward: custom.thing/1 -> custom.thing/2")
    assert "required_added at $.score" in r.stdout
    r = run_cli("schemas", "check-compat", "custom.thing", "1", "2", "--require", "forward", env=env)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["only-one"], 2),
        (["custom.thing", "x", "2"], 2),
        (["custom.thing", "1", "9"], 65),
        (["missing-old.json", "missing-new.json"], 66),
        (["bad.json", "bad.json"], 65),
        (["remote.json", "remote.json"], 65),
    ],
)
def test_cli_errors(run_cli: Any, tmp_path: Path, args: list[str], code: int) -> None:
    """Bad arguments exit 2, an unknown version or invalid/remote-referencing schema 65, a missing file 66."""
    d = tmp_path / "s"
    _write(d / "custom.thing" / "1.json", BASE)
    (tmp_path / "bad.json").write_text("[1]")
    _write(tmp_path / "remote.json", {"$ref": "http://127.0.0.1:9/x.json"})
    r = run_cli("schemas", "check-compat", *args, "--require", "backward", env={"POET_SCHEMA_PATH": str(d)})
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
