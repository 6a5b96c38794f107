"""Schema versions: schemas/<type>/<n>.json, metadata.schema_version, emit --schema-version, readers of old events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import files_in

from poetctl import EventRouter
from poetctl.backends.fs.reader import decode_event
from poetctl.config import load_config
from poetctl.errors import InvalidData, UnknownType
from poetctl.schemas import SchemaRegistry

DRAFT = "https://json-schema.org/draft/2020-12/schema"
V1 = {
    "$schema": DRAFT,
    "title": "custom.thing",
    "x-poet-topic": "poet/custom/things",
    "type": "object",
    "required": ["name", "count"],
    "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
    "additionalProperties": False,
}
# Version 2 renames count to amount and requires a unit: a v1 payload is not a v2 payload.
V2 = {
    "$schema": DRAFT,
    "title": "custom.thing",
    "x-poet-topic": "poet/custom/things",
    "type": "object",
    "required": ["name", "amount", "unit"],
    "properties": {"name": {"type": "string"}, "amount": {"type": "integer"}, "unit": {"type": "string"}},
    "additionalProperties": False,
}
OLD = {"name": "a", "count": 3}
NEW = {"name": "a", "amount": 3, "unit": "kg"}


def write_versions(d: Path, *schemas: dict[str, Any], event_type: str = "custom.thing") -> Path:
    """``d/<type>/1.json``, ``2.json``... holding ``schemas``; returns ``d``."""
    (d / event_type).mkdir(parents=True)
    for n, s in enumerate(schemas, 1):
        (d / event_type / f"{n}.json").write_bytes(orjson.dumps(s))
    return d


@pytest.fixture
def vrouter(tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch) -> EventRouter:
    """A router whose schema path holds custom.thing versions 1 and 2."""
    monkeypatch.chdir(tmp_path)
    sdir = write_versions(tmp_path / "s", V1, V2)
    return EventRouter(config=load_config(env={"POET_SCHEMA_PATH": str(sdir), "POET_SPOOL": str(spool)}))


def stored(spool: Path, eid: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((spool / "events" / "pending" / f"{eid}.json").read_bytes())
    return out


def test_builtin_types_are_version_one_directories() -> None:
    """Each of the 20 built-in types lives in schemas/<type>/1.json, and version 1 is its newest."""
    reg = SchemaRegistry()
    for t, path in reg.types().items():
        assert path == reg.builtin / t / "1.json"
        assert reg.versions(t) == {1: path}
        assert reg.newest(t) == 1


def test_emit_records_the_newest_version(router: EventRouter, spool: Path, samples: dict[str, Any]) -> None:
    """An emitted built-in event carries metadata.schema_version = 1 (its newest)."""
    eid = router.emit("system.health", samples["system.health"]["valid"][0])
    assert stored(spool, eid)["metadata"]["schema_version"] == 1


def test_emit_validates_against_the_newest_version(vrouter: EventRouter, spool: Path) -> None:
    """Without a version, emit validates against version 2 (refusing a v1 payload) and records 2."""
    with pytest.raises(InvalidData) as info:
        vrouter.emit("custom.thing", OLD)
    assert "custom.thing/2.json" in str(info.value)
    eid = vrouter.emit("custom.thing", NEW)
    assert stored(spool, eid)["metadata"]["schema_version"] == 2


def test_build_with_an_older_version(vrouter: EventRouter) -> None:
    """schema_version=1 validates against 1.json (a v2 payload is refused) and records 1."""
    ev, _ = vrouter.build("custom.thing", OLD, schema_version=1)
    assert ev.metadata["schema_version"] == 1
    with pytest.raises(InvalidData, match=r"custom.thing/1.json"):
        vrouter.build("custom.thing", NEW, schema_version=1)


def test_unknown_version_is_refused_with_the_known_ones(vrouter: EventRouter) -> None:
    """A version the type does not have is an InvalidData naming the known versions."""
    with pytest.raises(InvalidData, match=r"no schema version 3; known versions: 1, 2"):
        vrouter.build("custom.thing", NEW, schema_version=3)


def test_cli_emit_schema_version(run_cli: Any, tmp_path: Path, spool: Path) -> None:
    """`emit --schema-version 1` accepts a v1 payload the default (v2) refuses; both routes (fast path, typer)."""
    sdir = write_versions(tmp_path / "s", V1, V2)
    env = {"POET_SCHEMA_PATH": str(sdir)}
    r = run_cli("--spool", spool, "emit", "custom.thing", json.dumps(OLD), env=env)
    assert r.returncode == 65 and "custom.thing/2.json" in r.stderr
    r = run_cli("--spool", spool, "emit", "custom.thing", json.dumps(OLD), "--schema-version", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert stored(spool, r.stdout.strip())["metadata"]["schema_version"] == 1
    # --init is a flag: typer parses this call, not the fast path.
    r = run_cli("--spool", spool, "emit", "--init", "custom.thing", json.dumps(OLD), "--schema-version=1", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("--spool", spool, "emit", "custom.thing", json.dumps(OLD), "--schema-version", "x", env=env)
    assert r.returncode == 2, r.stderr
    r = run_cli("--spool", spool, "emit", "custom.thing", json.dumps(NEW), "--schema-version", "7", env=env)
    assert r.returncode == 65 and "known versions: 1, 2" in r.stderr


def test_batch_envelopes_validate_against_their_declared_version(vrouter: EventRouter, spool: Path) -> None:
    """A sealed envelope with schema_version 1 is checked against 1.json; one without a version counts as 1."""
    ev, _ = vrouter.build("custom.thing", OLD, schema_version=1)
    again, _ = vrouter.ingest(ev.to_dict())
    assert again.metadata["schema_version"] == 1
    bare = vrouter.build("custom.thing", OLD, schema_version=1)[0]
    del bare.metadata["schema_version"]
    bare.seal()
    vrouter.ingest(bare.to_dict())  # written before versions: version 1
    lying = vrouter.build("custom.thing", OLD, schema_version=1)[0]
    lying.metadata["schema_version"] = 2
    lying.seal()
    with pytest.raises(InvalidData, match=r"custom.thing/2.json"):
        vrouter.ingest(lying.to_dict())


def test_partial_envelope_keeps_the_version(vrouter: EventRouter) -> None:
    """An unsealed envelope with its own metadata gets the version it was validated against added."""
    ev, _ = vrouter.ingest(
        {"type": "custom.thing", "payload": NEW, "metadata": {"version": "1.0", "environment": "e", "service": "s"}}
    )
    assert ev.metadata["schema_version"] == 2
    ev, _ = vrouter.ingest(
        {
            "type": "custom.thing",
            "payload": OLD,
            "metadata": {"version": "1", "environment": "e", "service": "s", "schema_version": 1},
        }
    )
    assert ev.metadata["schema_version"] == 1


def test_reader_accepts_an_event_of_an_older_version(vrouter: EventRouter) -> None:
    """A stored v1 event stays readable (not quarantined as bad_schema) after version 2 is added."""
    ev, _ = vrouter.build("custom.thing", OLD, schema_version=1)
    got = decode_event(ev.to_json(), vrouter.registry)
    assert got.payload == OLD
    with pytest.raises(InvalidData, match=r"does not match custom.thing/2.json \(nor any older version\)"):
        vrouter.registry.validate_payload("custom.thing", {"name": "a"})


def test_flat_file_is_version_one(tmp_path: Path) -> None:
    """A user directory's flat <type>.json (the layout before versions) is version 1."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "custom.thing.json").write_bytes(orjson.dumps(V1))
    reg = SchemaRegistry([d])
    assert reg.versions("custom.thing") == {1: d / "custom.thing.json"}
    assert "custom.thing" in reg.types()


def test_both_layouts_for_one_type_is_an_error(tmp_path: Path) -> None:
    """A type defined by <type>.json and by <type>/ is refused, naming both."""
    d = write_versions(tmp_path / "s", V1)
    (d / "custom.thing.json").write_bytes(orjson.dumps(V1))
    with pytest.raises(InvalidData, match=r"defined twice"):
        SchemaRegistry([d]).validate_payload("custom.thing", OLD)


@pytest.mark.parametrize("name", ["v2.json", "02.json", "0.json", "2.5.json"])
def test_a_misnamed_version_file_is_an_error(tmp_path: Path, name: str) -> None:
    """A .json file in a type's directory whose name is not <n>.json is refused, not silently skipped."""
    d = write_versions(tmp_path / "s", V1)
    (d / "custom.thing" / name).write_bytes(orjson.dumps(V2))
    with pytest.raises(InvalidData, match=r"is not a version"):
        SchemaRegistry([d]).newest("custom.thing")


def test_user_dir_cannot_add_a_version_of_a_builtin_type(tmp_path: Path) -> None:
    """A type comes whole from the first directory defining it: a user's system.health/2.json is not used."""
    d = write_versions(tmp_path / "s", V1, V2, event_type="system.health")
    reg = SchemaRegistry([d])
    assert reg.newest("system.health") == 1


def test_unknown_type_names_the_directory_layout() -> None:
    """The unknown-type message tells where to write <type>/1.json."""
    with pytest.raises(UnknownType, match=r"no\.such/1\.json"):
        SchemaRegistry().newest("no.such")


def test_schema_version_is_checked_by_the_envelope(router: EventRouter, spool: Path) -> None:
    """An envelope whose metadata.schema_version is not a positive integer is refused; nothing is written."""
    ev, _ = router.build("system.health", {"service": "a", "status": "healthy"})
    for bad in (0, "1", None):
        ev.metadata["schema_version"] = bad
        ev.seal()
        with pytest.raises(InvalidData, match=r"envelope"):
            router.ingest(ev.to_dict())
    assert files_in(spool / "events" / "pending") == []
