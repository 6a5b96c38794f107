"""Built-in schemas: every type emits its valid samples and refuses its invalid ones,
the two validators agree, path-bound fields are pattern-checked, user schemas plug in."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import files_in, load_samples
from jsonschema import Draft202012Validator

from poetctl import EventRouter, load_config
from poetctl.errors import InvalidData, UnknownType
from poetctl.event import verify_checksum
from poetctl.schemas import TIME_MAX, TIME_MIN, SchemaRegistry, envelope_surely_valid, fast_validator

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO / "schemas"

BUILTIN_TYPES = {
    "function.execution",
    "function.feedback",
    "function.update",
    "drift.detected",
    "monitoring.completed",
    "monitoring.performance_degraded",
    "feedback.human_validation",
    "feedback.model_retrained",
    "feedback.alert_resolved",
    "feedback.mlflow_validation",
    "learning.pattern_detected",
    "learning.false_positive_detected",
    "enhancement.completed",
    "enhancement.regenerated",
    "enhancement.regeneration_needed",
    "alert.create_external",
    "alert.created_external",
    "transpilation.completed",
    "system.health",
    "system.metrics",
    "system.alert",
}

# The seed's "Event Topics Structure", written out independently of poetctl.topics.
# "{fn}" is the payload's function_name (poet/functions/system when it has none).
EXPECTED_TOPIC = {
    "function.execution": "poet/functions/{fn}/execution",
    "function.feedback": "poet/functions/{fn}/feedback",
    "function.update": "poet/functions/{fn}/updates",
    "drift.detected": "poet/functions/{fn}/execution",
    "monitoring.completed": "poet/functions/{fn}/execution",
    "monitoring.performance_degraded": "poet/functions/{fn}/execution",
    "transpilation.completed": "poet/functions/{fn}/updates",
    "enhancement.completed": "poet/functions/{fn}/updates",
    "enhancement.regenerated": "poet/functions/{fn}/updates",
    "enhancement.regeneration_needed": "poet/functions/{fn}/updates",
    "learning.pattern_detected": "poet/functions/system",
    "learning.false_positive_detected": "poet/functions/system",
    "feedback.human_validation": "poet/feedback/pending",
    "feedback.model_retrained": "poet/feedback/pending",
    "feedback.alert_resolved": "poet/feedback/pending",
    "feedback.mlflow_validation": "poet/feedback/pending",
    "alert.create_external": "poet/system/alerts",
    "alert.created_external": "poet/system/alerts",
    "system.health": "poet/system/health",
    "system.metrics": "poet/system/metrics",
    "system.alert": "poet/system/alerts",
}

SAMPLES = load_samples()
VALID_CASES = [(t, i) for t in sorted(SAMPLES) for i in range(len(SAMPLES[t]["valid"]))]
INVALID_CASES = [(t, i) for t in sorted(SAMPLES) for i in range(len(SAMPLES[t]["invalid"]))]
SCHEMA_FILES = sorted([*SCHEMA_DIR.glob("*.json"), *SCHEMA_DIR.glob("*/*.json")])
PATH_FIELDS = ("function_name", "version", "old_version", "new_version")
PATH_ESCAPES = ("../etc", "a/b", ".hidden", "")


def expected_topic(event_type: str, payload: dict[str, Any]) -> str:
    tpl = EXPECTED_TOPIC[event_type]
    if "{fn}" not in tpl:
        return tpl
    fn = payload.get("function_name")
    return tpl.replace("{fn}", fn) if fn else "poet/functions/system"


def test_samples_cover_every_builtin_type() -> None:
    """The sample set has valid and invalid payloads for each of the 20 built-in types."""
    assert set(SAMPLES) == BUILTIN_TYPES
    for t, s in SAMPLES.items():
        assert s["valid"] and s["invalid"], t


def test_registry_lists_exactly_the_builtin_types() -> None:
    """SchemaRegistry().types() lists exactly the seed's 20 types plus system.alert (issue 13)."""
    types = SchemaRegistry().types()
    assert len(types) == 21
    assert set(types) == BUILTIN_TYPES
    for t, path in types.items():
        assert path == SchemaRegistry().builtin / t / "1.json"
        assert path.is_file()


@pytest.mark.parametrize(("event_type", "index"), VALID_CASES)
def test_valid_sample_is_emitted_with_its_topic(router: EventRouter, spool: Path, event_type: str, index: int) -> None:
    """A valid sample payload is emitted into events/pending/<id>.json with the routed topic."""
    payload = SAMPLES[event_type]["valid"][index]
    eid = router.emit(event_type, payload)
    path = spool / "events" / "pending" / f"{eid}.json"
    assert path.is_file()
    obj = json.loads(path.read_bytes())
    assert obj["id"] == eid
    assert obj["type"] == event_type
    assert obj["payload"] == payload
    assert obj["topic"] == expected_topic(event_type, payload)
    verify_checksum(obj)
    assert files_in(spool / "events" / "pending") == [path]
    assert files_in(spool / "events" / "tmp") == []


@pytest.mark.parametrize(("event_type", "index"), INVALID_CASES)
def test_invalid_sample_is_refused_and_nothing_written(
    router: EventRouter, spool: Path, event_type: str, index: int
) -> None:
    """An invalid sample payload raises InvalidData and leaves pending/ and tmp/ empty."""
    case = SAMPLES[event_type]["invalid"][index]
    with pytest.raises(InvalidData) as info:
        router.emit(event_type, case["payload"])
    assert str(info.value), case["why"]
    assert files_in(spool / "events" / "pending") == [], case["why"]
    assert files_in(spool / "events" / "tmp") == [], case["why"]


# -- agreement between the reference and the fast validator -------------------


def _generated_envelopes() -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """Valid envelopes built by the router, and invalid mutations of them."""
    router = EventRouter(spool="/nonexistent-never-written", config=load_config(env={}))
    valid = []
    for t in sorted(SAMPLES):
        ev, _ = router.build(t, SAMPLES[t]["valid"][0], correlation_id="corr-1", causation_id="c-1")
        valid.append(ev.to_dict())
    base = valid[0]
    invalid: list[tuple[str, dict[str, Any]]] = []

    def mutated(why: str, fn: Any) -> None:
        d = copy.deepcopy(base)
        fn(d)
        invalid.append((why, d))

    mutated("bad id ../x", lambda d: d.__setitem__("id", "../x"))
    mutated("missing topic", lambda d: d.pop("topic"))
    mutated("extra key", lambda d: d.__setitem__("extra", 1))
    mutated("bad checksum pattern", lambda d: d.__setitem__("checksum", "md5:abc"))
    mutated("uppercase checksum hex", lambda d: d.__setitem__("checksum", "sha256:" + "A" * 64))
    mutated("control char in correlation_id", lambda d: d.__setitem__("correlation_id", "a\nb"))
    mutated("negative timestamp", lambda d: d.__setitem__("timestamp", -1))
    mutated("metadata without environment", lambda d: d["metadata"].pop("environment"))
    mutated("payload is a list", lambda d: d.__setitem__("payload", []))
    mutated("bad type", lambda d: d.__setitem__("type", "Drift"))
    mutated("topic with ..", lambda d: d.__setitem__("topic", "poet/../x"))
    mutated("causation_id with slash", lambda d: d.__setitem__("causation_id", "a/b"))
    return valid, invalid


VALID_ENVELOPES, INVALID_ENVELOPES = _generated_envelopes()
ODD_INSTANCES: list[Any] = [{}, [], None, "x", 1, 1.5, True, {"function_name": None}]


@pytest.mark.parametrize("schema_file", SCHEMA_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reference_and_fast_validators_agree(schema_file: Path) -> None:
    """python-jsonschema and jsonschema-rs as poetctl runs it give the same verdict on every sample and envelope."""
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    ref = Draft202012Validator(schema)
    fast = fast_validator(schema)
    name = schema_file.name[: -len(".json")] if schema_file.parent == SCHEMA_DIR else schema_file.parent.name
    instances: list[tuple[str, Any]] = [(f"odd {i}", x) for i, x in enumerate(ODD_INSTANCES)]
    for t, s in SAMPLES.items():
        instances += [(f"{t} valid {i}", p) for i, p in enumerate(s["valid"])]
        instances += [(f"{t} invalid {c['why']}", c["payload"]) for c in s["invalid"]]
    instances += [(f"envelope {e['type']}", e) for e in VALID_ENVELOPES]
    instances += [(f"envelope {why}", e) for why, e in INVALID_ENVELOPES]
    disagreements = [
        (label, ref.is_valid(x), fast.is_valid(x)) for label, x in instances if ref.is_valid(x) != fast.is_valid(x)
    ]
    assert disagreements == []
    # The instances meant for this schema get the intended verdict, too.
    if name == "envelope":
        assert all(ref.is_valid(e) for e in VALID_ENVELOPES)
        assert [why for why, e in INVALID_ENVELOPES if ref.is_valid(e)] == []
    else:
        assert all(ref.is_valid(p) for p in SAMPLES[name]["valid"])
        assert [c["why"] for c in SAMPLES[name]["invalid"] if ref.is_valid(c["payload"])] == []


def _more_envelope_mutations() -> list[tuple[str, dict[str, Any]]]:
    """Edge cases for the hand-written envelope check: each boundary on both sides."""
    base = VALID_ENVELOPES[0]
    cases: list[tuple[str, Any]] = [
        ("id with trailing newline", ("id", "abc\n")),
        ("id of 128 chars", ("id", "a" * 128)),
        ("id of 129 chars", ("id", "a" * 129)),
        ("bool timestamp", ("timestamp", True)),
        ("int timestamp", ("timestamp", 0)),
        ("string timestamp", ("timestamp", "1")),
        ("empty source", ("source", "")),
        ("source of 256", ("source", "s" * 256)),
        ("source of 257", ("source", "s" * 257)),
        ("topic of 513", ("topic", "t" * 513)),
        ("topic with trailing slash", ("topic", "poet/x/")),
        ("type with one part", ("type", "drift")),
        ("type as list", ("type", ["drift.detected"])),
        ("metadata as list", ("metadata", [])),
        ("correlation_id empty", ("correlation_id", "")),
        ("correlation_id of 257", ("correlation_id", "c" * 257)),
        ("correlation_id with unicode", ("correlation_id", "drift-\u00e9-1")),
        ("causation_id of 129", ("causation_id", "c" * 129)),
        ("expires_at negative", ("expires_at", -0.5)),
        ("expires_at bool", ("expires_at", False)),
        # timestamp and expires_at lie between 2000-01-01 and 2200-01-01 UTC, bounds included.
        *[
            (f"{key} {why}", (key, value))
            for key in ("timestamp", "expires_at")
            for why, value in (
                ("at the lower bound", TIME_MIN),
                ("at the lower bound as float", float(TIME_MIN)),
                ("just below the lower bound", TIME_MIN - 0.001),
                ("zero", 0),
                ("at the upper bound", TIME_MAX),
                ("just above the upper bound", TIME_MAX + 0.001),
                ("in year 10000", 253402300800),
                ("1e300", 1e300),
                ("-1e300", -1e300),
                ("now", 1795936418.25),
            )
        ],
        ("checksum null", ("checksum", None)),
        ("payload null", ("payload", None)),
    ]
    out = []
    for why, (key, value) in cases:
        d = copy.deepcopy(base)
        d[key] = value
        out.append((why, d))
    for key in ("version", "environment", "service"):
        for value in ("", "x" * 65, None, 1):
            d = copy.deepcopy(base)
            d["metadata"][key] = value
            out.append((f"metadata.{key}={value!r}", d))
    d = copy.deepcopy(base)
    d["metadata"]["replayed"] = True
    out.append(("metadata with an extra key", d))
    # metadata.schema_version: an integer from 1 to 999999999.
    for value in (1, 2, 999999999, 0, -1, 1000000000, True, "2", None):  # 1.0: left to the schema
        d = copy.deepcopy(base)
        d["metadata"]["schema_version"] = value
        out.append((f"metadata.schema_version={value!r}", d))
    # priority: high, normal or low (issue 15).
    for value in ("high", "normal", "low", "HIGH", "urgent", "", None, 1, ["high"], {"high": 1}):
        d = copy.deepcopy(base)
        d["priority"] = value
        out.append((f"priority={value!r}", d))
    for key in list(base):
        d = copy.deepcopy(base)
        d.pop(key)
        out.append((f"without {key}", d))
    return out


def test_fast_envelope_check_never_accepts_what_the_schema_rejects() -> None:
    """envelope_surely_valid is stricter or equal to envelope.json, and accepts every valid envelope we build."""
    schema = json.loads((REPO / "schemas" / "envelope.json").read_text(encoding="utf-8"))
    ref = Draft202012Validator(schema)
    fast = fast_validator(schema)

    def schema_accepts(e: Any) -> bool:
        # Both validators: python-jsonschema lets "$" match before a final newline, jsonschema-rs does not.
        return bool(ref.is_valid(e) and fast.is_valid(e))

    cases = [(f"valid {e['type']}", e) for e in VALID_ENVELOPES] + INVALID_ENVELOPES + _more_envelope_mutations()
    cases += [(f"odd {i}", x) for i, x in enumerate(ODD_INSTANCES)]
    wrongly_accepted = [why for why, e in cases if envelope_surely_valid(e) and not schema_accepts(e)]
    assert wrongly_accepted == []
    assert all(envelope_surely_valid(e) for e in VALID_ENVELOPES)
    # It decides the boundaries itself rather than deferring to the (slower) schema.
    deferred = [why for why, e in cases if not envelope_surely_valid(e) and schema_accepts(e)]
    assert deferred == []
    # And the registry's verdict (fast check first) is the schema's on every case.
    reg = SchemaRegistry()
    for why, e in cases:
        if not isinstance(e, dict):
            continue
        try:
            reg.check_envelope(e)
            accepted = True
        except InvalidData:
            accepted = False
        head = dict(e)
        if isinstance(head.get("payload"), dict):
            head["payload"] = {}
        assert accepted == schema_accepts(head), why


TIME_CASES = [
    (946684800, True),  # 2000-01-01T00:00:00Z
    (946684800.0, True),
    (946684799.999, False),
    (0, False),
    (-1, False),
    (7258118400, True),  # 2200-01-01T00:00:00Z
    (7258118400.001, False),
    (253402300800, False),  # year 10000: beyond what datetime can hold
    (1e300, False),
    (-1e300, False),
    (1795936418.25, True),
]


@pytest.mark.parametrize("key", ["timestamp", "expires_at"])
@pytest.mark.parametrize(("value", "sane"), TIME_CASES)
def test_envelope_bounds_times_to_2000_through_2200(key: str, value: float, sane: bool) -> None:
    """envelope.json, both validators, the fast check and the registry take timestamp/expires_at only in 2000..2200."""
    assert (TIME_MIN, TIME_MAX) == (946684800, 7258118400)
    schema = json.loads((REPO / "schemas" / "envelope.json").read_text(encoding="utf-8"))
    e = copy.deepcopy(VALID_ENVELOPES[0])
    e[key] = value
    assert Draft202012Validator(schema).is_valid(e) == sane
    assert fast_validator(schema).is_valid(e) == sane
    assert envelope_surely_valid(e) == sane
    if sane:
        SchemaRegistry().check_envelope(e)
    else:
        with pytest.raises(InvalidData) as info:
            SchemaRegistry().check_envelope(e)
        assert f"$.{key}" in str(info.value)


@pytest.mark.parametrize("value", [1e300, 253402300800, 0, 946684799])
@pytest.mark.parametrize("key", ["timestamp", "expires_at"])
@pytest.mark.parametrize("sealed", [False, True], ids=["partial", "sealed"])
def test_batch_refuses_absurd_times(
    run_cli: Any, spool: Path, tmp_path: Path, key: str, value: float, sealed: bool
) -> None:
    """emit --batch refuses an envelope whose timestamp/expires_at lies outside 2000..2200 (65, FILE:LINE, $.key)."""
    router = EventRouter(spool="/nonexistent-never-written", config=load_config(env={}))
    ev, _ = router.build("system.health", {"service": "s", "status": "healthy"})
    env = ev.to_dict(with_checksum=False)
    env[key] = value
    if sealed:
        from poetctl.event import compute_checksum

        env["checksum"] = compute_checksum(env)
    else:
        for k in ("id", "topic", "metadata", "source"):
            env.pop(k)
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(orjson.dumps(env) + b"\n")
    r = run_cli("--spool", spool, "emit", "--batch", batch)
    assert r.returncode == 65, r.stderr
    assert f"{batch}:1" in r.stderr and f"$.{key}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert files_in(spool / "events" / "pending") == []


@pytest.mark.parametrize("schema_file", SCHEMA_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_schema_is_valid_draft_2020_12(schema_file: Path) -> None:
    """Every shipped schema passes Draft202012Validator.check_schema and declares draft 2020-12."""
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    title = schema_file.name[: -len(".json")] if schema_file.parent == SCHEMA_DIR else schema_file.parent.name
    assert schema.get("title") == title


def _path_field_subschemas(node: Any, where: str = "$") -> list[tuple[str, Any]]:
    """Every subschema of a property named function_name/version/old_version/new_version."""
    found = []
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for k, v in props.items():
                if k in PATH_FIELDS:
                    found.append((f"{where}.properties.{k}", v))
        for k, v in node.items():
            found += _path_field_subschemas(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _path_field_subschemas(v, f"{where}[{i}]")
    return found


def test_path_fields_exist_in_schemas() -> None:
    """The schemas do have function_name/version properties to check (the scan finds them)."""
    total = sum(len(_path_field_subschemas(json.loads(f.read_bytes()))) for f in SCHEMA_FILES)
    assert total >= 15


@pytest.mark.parametrize("schema_file", SCHEMA_FILES, ids=lambda p: p.name)
def test_path_fields_carry_a_rejecting_pattern(schema_file: Path) -> None:
    """function_name/version/old_version/new_version patterns refuse ../etc, a/b, .hidden, ''."""
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    problems = []
    for where, sub in _path_field_subschemas(schema):
        pattern = sub.get("pattern") if isinstance(sub, dict) else None
        if not isinstance(pattern, str):
            problems.append(f"{where}: no pattern")
            continue
        for bad in PATH_ESCAPES:
            if re.search(pattern, bad) is not None:
                problems.append(f"{where}: pattern {pattern!r} accepts {bad!r}")
            if Draft202012Validator(sub).is_valid(bad):
                problems.append(f"{where}: subschema accepts {bad!r}")
    assert problems == []


# -- unknown and user-registered types ---------------------------------------


def test_unknown_type_says_how_to_register(router: EventRouter, spool: Path) -> None:
    """Emitting an unregistered type raises UnknownType naming 'schemas' and POET_SCHEMA_PATH."""
    with pytest.raises(UnknownType) as info:
        router.emit("no.such", {})
    msg = str(info.value)
    assert "schemas" in msg
    assert "POET_SCHEMA_PATH" in msg
    assert "no.such" in msg
    assert files_in(spool / "events" / "pending") == []
    assert isinstance(info.value, InvalidData)


CUSTOM_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "custom.thing",
    "x-poet-topic": "poet/custom/things",
    "type": "object",
    "required": ["name", "count"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "count": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}


@pytest.fixture
def custom_router(tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch) -> EventRouter:
    """A router whose config adds tmp_path/s (holding custom.thing.json) via POET_SCHEMA_PATH."""
    monkeypatch.chdir(tmp_path)  # no ./poet.toml of the developer's
    sdir = tmp_path / "s"
    sdir.mkdir()
    (sdir / "custom.thing.json").write_bytes(orjson.dumps(CUSTOM_SCHEMA))
    cfg = load_config(env={"POET_SCHEMA_PATH": str(sdir), "POET_SPOOL": str(spool)})
    return EventRouter(config=cfg)


def test_user_schema_dir_registers_a_type(custom_router: EventRouter, spool: Path) -> None:
    """A schema in a POET_SCHEMA_PATH directory makes its type emit-able on its x-poet-topic."""
    assert "custom.thing" in custom_router.registry.types()
    eid = custom_router.emit("custom.thing", {"name": "a", "count": 3})
    obj = json.loads((spool / "events" / "pending" / f"{eid}.json").read_bytes())
    assert obj["type"] == "custom.thing"
    assert obj["topic"] == "poet/custom/things"
    verify_checksum(obj)


def test_user_schema_is_enforced(custom_router: EventRouter, spool: Path) -> None:
    """A payload violating a user schema is refused and nothing is written."""
    with pytest.raises(InvalidData) as info:
        custom_router.emit("custom.thing", {"name": "a", "count": -1})
    assert "count" in str(info.value)
    with pytest.raises(InvalidData):
        custom_router.emit("custom.thing", {"name": "a"})
    assert files_in(spool / "events" / "pending") == []
    assert files_in(spool / "events" / "tmp") == []


# -- CLI ------------------------------------------------------------------------


def test_cli_schemas_lists_types_as_jsonl(run_cli: Any) -> None:
    """`poetctl schemas --output jsonl` prints one row per type with type, topic and schema."""
    r = run_cli("schemas", "--output", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(rows) >= 20
    for row in rows:
        assert {"type", "topic", "schema"} <= set(row)
        assert Path(row["schema"]).parent.name == row["type"]
        assert Path(row["schema"]).name == "1.json"
    by_type = {row["type"]: row for row in rows}
    assert set(by_type) >= BUILTIN_TYPES
    assert by_type["system.health"]["topic"] == "poet/system/health"
    assert by_type["feedback.human_validation"]["topic"] == "poet/feedback/pending"
    assert all(by_type[t]["builtin"] is True for t in BUILTIN_TYPES)  # also inside <type>/<n>.json directories


def test_cli_schemas_show_prints_the_schema(run_cli: Any) -> None:
    """`poetctl schemas show drift.detected` prints the JSON Schema titled drift.detected."""
    r = run_cli("schemas", "show", "drift.detected")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["title"] == "drift.detected"
    assert schema == json.loads((SCHEMA_DIR / "drift.detected" / "1.json").read_bytes())


def test_cli_schemas_show_envelope(run_cli: Any) -> None:
    """`poetctl schemas show envelope` prints the envelope schema."""
    r = run_cli("schemas", "show", "envelope")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["title"] == "envelope"
    assert {"id", "type", "topic", "payload", "checksum"} <= set(schema["properties"])


def test_cli_schemas_show_unknown_type(run_cli: Any) -> None:
    """`poetctl schemas show no.such` exits 65 with the how-to-register message."""
    r = run_cli("schemas", "show", "no.such")
    assert r.returncode == 65
    assert "POET_SCHEMA_PATH" in r.stderr
    assert "Traceback" not in r.stderr
