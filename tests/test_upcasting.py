"""Upcasters: registration checks, missing steps found before handling, handlers get the newest version,
``tail --upcast`` shows it, the daemon refuses to start on a missing step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from poetctl.config import load_config
from poetctl.daemon.loader import check_upcasters
from poetctl.event import Event
from poetctl.router import EventRouter
from poetctl.schemas import SchemaRegistry
from poetctl.testing import Harness
from poetctl.upcasting import UpcastError, Upcasters, upcast_event

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def obj(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "type": "object",
        "required": required,
        "properties": props,
        "additionalProperties": False,
    }


S = {"type": "string"}
INT = {"type": "integer"}
# v1 -> v2 breaking (count renamed amount); v2 -> v3 adds an optional note: v3 reads v2 unchanged.
V1 = obj(["name", "count"], {"name": S, "count": INT})
V2 = obj(["name", "amount"], {"name": S, "amount": INT})
V3 = obj(["name", "amount"], {"name": S, "amount": INT, "note": S})
V4 = obj(["name", "amount", "unit"], {"name": S, "amount": INT, "note": S, "unit": S})


def schema_dir(root: Path, *versions: dict[str, Any]) -> Path:
    d = root / "s" / "custom.thing"
    d.mkdir(parents=True)
    for n, s in enumerate(versions, 1):
        (d / f"{n}.json").write_bytes(orjson.dumps(s))
    return root / "s"


def rename(p: dict[str, Any]) -> dict[str, Any]:
    return {"name": p["name"], "amount": p.pop("count")}


@pytest.fixture
def reg3(tmp_path: Path) -> SchemaRegistry:
    return SchemaRegistry([schema_dir(tmp_path, V1, V2, V3)])


def test_register_refuses_malformed_steps(reg3: SchemaRegistry) -> None:
    """Unknown type or version, a backward step, a second step out of a version, a non-callable: UpcastError."""
    ups = Upcasters(reg3)
    ups.register("custom.thing", 1, 2, rename)
    for args, match in [
        (("no.such", 1, 2, rename), "unknown event type"),
        (("custom.thing", 1, 9, rename), "no schema version 9; known versions: 1, 2, 3"),
        (("custom.thing", 2, 1, rename), "greater than from_version"),
        (("custom.thing", 2, 2, rename), "greater than from_version"),
        (("custom.thing", 1, 3, rename), "already has a step out of version 1"),
        (("custom.thing", 0, 2, rename), "from_version"),
        (("custom.thing", 2, 3, "nope"), "callable"),
    ]:
        with pytest.raises(UpcastError, match=match):
            ups.register(*args)  # type: ignore[arg-type]


def test_missing_breaking_step_is_named_by_check(reg3: SchemaRegistry) -> None:
    """No upcaster for a breaking 1 -> 2: check() names the type, the version and what to register."""
    ups = Upcasters(reg3)
    with pytest.raises(UpcastError) as info:
        ups.check()
    msg = str(info.value)
    assert "no upcaster from version 1 of custom.thing" in msg
    assert "router.upcast('custom.thing', 1, 2, fn)" in msg
    assert "version 2" not in msg.split(";")[0].split("newest")[0]  # v2 -> v3 is compatible: not reported


def test_compatible_gap_needs_no_step(reg3: SchemaRegistry) -> None:
    """With 1 -> 2 registered, the chain passes 2 -> 3 unchanged (v3 reads v2) and check() is clean."""
    ups = Upcasters(reg3)
    ups.register("custom.thing", 1, 2, rename)
    ups.check()
    assert [(s.from_version, s.to_version, s.fn is None) for s in ups.plan("custom.thing", 1)] == [
        (1, 2, False),
        (2, 3, True),
    ]


def event(version: int, payload: dict[str, Any]) -> Event:
    meta = {"version": "1", "environment": "t", "service": "t", "schema_version": version}
    return Event("e1", "custom.thing", "t", 1_800_000_000.0, "poet/custom", payload, meta).seal()


def test_apply_runs_the_chain_and_marks_the_event(reg3: SchemaRegistry) -> None:
    """A v1 event comes out at v3 with upcast_from 1, resealed; the original is untouched."""
    ups = Upcasters(reg3)
    ups.register("custom.thing", 1, 2, rename)
    old = event(1, {"name": "a", "count": 3})
    new = upcast_event(old, ups)
    assert new.payload == {"name": "a", "amount": 3}
    assert new.metadata["schema_version"] == 3 and new.metadata["upcast_from"] == 1
    assert old.payload == {"name": "a", "count": 3} and old.metadata["schema_version"] == 1
    assert new.checksum != old.checksum
    current = event(3, {"name": "a", "amount": 1})
    assert upcast_event(current, ups) is current
    assert upcast_event(old, None) is old


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda p: 1 / 0, "failed: ZeroDivisionError"),
        (lambda p: [p], "returned list"),
        (lambda p: {"name": "a"}, "(?s)upcasting to version 2: .*amount"),
    ],
)
def test_a_bad_upcaster_is_an_upcast_error(reg3: SchemaRegistry, fn: Any, match: str) -> None:
    """An upcaster that raises, returns a non-dict or an invalid payload gives UpcastError naming the step."""
    ups = Upcasters(reg3)
    ups.register("custom.thing", 1, 2, fn)
    with pytest.raises(UpcastError, match=match):
        upcast_event(event(1, {"name": "a", "count": 3}), ups)


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={"POET_SCHEMA_PATH": str(schema_dir(tmp_path, V1, V2, V3)), "POET_SPOOL": str(tmp_path)})
    return Harness(config=cfg)


def test_handlers_receive_the_newest_version(harness: Harness) -> None:
    """The daemon's dispatch hands a v1 event to the handler as v3 (router.upcast registered 1 -> 2)."""
    seen: list[tuple[int, dict[str, Any]]] = []
    harness.router.subscribe("custom.thing", lambda e: seen.append((e.metadata["schema_version"], e.payload)), name="h")
    harness.router.upcast("custom.thing", 1, 2, rename)
    check_upcasters(harness.router)
    harness.router.emit("custom.thing", {"name": "old", "count": 1}, schema_version=1)
    harness.router.emit("custom.thing", {"name": "new", "amount": 2})
    harness.drain()
    assert seen == [(3, {"name": "old", "amount": 1}), (3, {"name": "new", "amount": 2})]


def test_failing_upcast_dead_letters_the_event(harness: Harness) -> None:
    """An upcaster that raises dead-letters its event (reason permanent) and the next event is handled."""
    seen: list[str] = []
    harness.router.subscribe("custom.thing", lambda e: seen.append(e.payload["name"]), name="h")
    harness.router.upcast("custom.thing", 1, 2, lambda p: 1 / 0)
    bad = harness.router.emit("custom.thing", {"name": "old", "count": 1}, schema_version=1)
    harness.router.emit("custom.thing", {"name": "new", "amount": 2})
    harness.drain()
    assert seen == ["new"]
    info = harness.dead_letter(bad)
    assert info is not None and info["reason"] == "permanent"
    assert "ZeroDivisionError" in json.dumps(info)


HANDLERS = """
def register(router):
    router.upcast("custom.thing", 1, 2, lambda p: {"name": p["name"], "amount": p["count"]})
"""


def test_tail_upcast(run_cli: Any, tmp_path: Path, spool: Path) -> None:
    """tail -o jsonl prints a v1 event as stored; with --upcast --handlers it prints it at v3."""
    env = {"POET_SCHEMA_PATH": str(schema_dir(tmp_path, V1, V2, V3))}
    mod = tmp_path / "ups.py"
    mod.write_text(HANDLERS)
    r = run_cli("--spool", spool, "emit", "custom.thing", '{"name": "a", "count": 3}', "--schema-version", "1", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("--spool", spool, "tail", "-o", "jsonl", env=env)
    assert json.loads(r.stdout)["payload"] == {"name": "a", "count": 3}
    r = run_cli("--spool", spool, "tail", "-o", "jsonl", "--upcast", "--handlers", mod, env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["payload"] == {"name": "a", "amount": 3}
    assert shown["metadata"]["schema_version"] == 3 and shown["metadata"]["upcast_from"] == 1


def test_missing_step_stops_tail_and_the_daemon_at_start(run_cli: Any, tmp_path: Path, spool: Path) -> None:
    """With a breaking version and no upcaster, `tail --upcast` and `daemon --once` exit 65 naming the step."""
    env = {"POET_SCHEMA_PATH": str(schema_dir(tmp_path, V1, V2, V3, V4))}
    mod = tmp_path / "ups.py"
    mod.write_text(HANDLERS)  # 1 -> 2 only; 3 -> 4 adds a required unit: missing
    r = run_cli("--spool", spool, "emit", "custom.thing", '{"name": "a", "count": 3}', "--schema-version", "1", env=env)
    assert r.returncode == 0, r.stderr
    for argv in (["tail", "--upcast", "--handlers", mod], ["daemon", "--once", "--handlers", mod]):
        r = run_cli("--spool", spool, *argv, env=env)
        assert r.returncode == 65, r.stderr
        assert "no upcaster from version 3 of custom.thing" in r.stderr
        assert "Traceback" not in r.stderr
    assert len(list((spool / "events" / "pending").iterdir())) == 1  # nothing was handled


def test_router_without_upcasters_changes_nothing(tmp_path: Path, spool: Path) -> None:
    """A router nobody registered an upcaster on has none (emit pays nothing for the feature)."""
    assert EventRouter(spool=spool).upcasters is None


def test_the_spool_daemon_hands_handlers_the_newest_version(run_cli: Any, tmp_path: Path, spool: Path) -> None:
    """`poetctl daemon --once` runs a stored v1 event through the chain: the handler sees v3's payload."""
    env = {"POET_SCHEMA_PATH": str(schema_dir(tmp_path, V1, V2, V3))}
    out = tmp_path / "seen.jsonl"
    mod = tmp_path / "ups.py"
    mod.write_text(
        HANDLERS
        + f"""
    import json

    def seen(event):
        with open({str(out)!r}, "a") as fh:
            fh.write(json.dumps([event.payload, event.metadata.get("schema_version")]) + "\\n")

    router.subscribe("custom.thing", seen, name="seen")
"""
    )
    r = run_cli("--spool", spool, "emit", "custom.thing", '{"name": "a", "count": 3}', "--schema-version", "1", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("--spool", spool, "daemon", "--once", "--no-builtin-handlers", "--handlers", mod, env=env)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [[{"name": "a", "amount": 3}, 3]]
