"""Function state: function.update and enhancement.regenerated, handled by a real
`poetctl daemon --once`, move state/<fn>/current.json and add history/<version>.json;
`poetctl state show|list` print them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv

from poetctl import EventRouter
from poetctl.backends.fs.storage import StateStore
from poetctl.errors import InvalidData

FN = "detect_drift"


def update_payload(old: str, new: str, fn: str = FN) -> dict[str, Any]:
    return {
        "function_name": fn,
        "old_version": old,
        "new_version": new,
        "reason": "threshold_too_sensitive pattern detected",
        "changes": [{"type": "params", "description": "drift threshold 0.5 -> 0.7"}],
    }


def regenerated_payload(old: str, new: str, fn: str = FN) -> dict[str, Any]:
    return {
        "function_name": fn,
        "old_version": old,
        "new_version": new,
        "regeneration_reason": "false_positive_seasonal pattern detected",
        "improvements": ["seasonal reference window"],
        "expected_impact": {"false_positive_reduction": 0.6, "accuracy_improvement": 0.05, "cost_reduction": 0.3},
    }


def _daemon_once(spool: Path, cwd: Path) -> None:
    proc = subprocess.run(
        cli_argv("--spool", spool, "daemon", "--once"),
        env=clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def versioned_spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """detect_drift moved 1.0.0 -> 1.1.0 (function.update) -> 1.2.0 (enhancement.regenerated) by daemon --once.

    Module-scoped and read-only: tests that change the spool work on a copy.
    """
    base = tmp_path_factory.mktemp("state")
    spool = base / "spool"
    router = EventRouter(spool=spool)
    upd = router.emit("function.update", update_payload("1.0.0", "1.1.0"), source="poet.generator")
    _daemon_once(spool, base)
    regen = router.emit("enhancement.regenerated", regenerated_payload("1.1.0", "1.2.0"), source="poet.generator")
    other = router.emit("function.update", update_payload("0.1", "0.2", fn="score_model"))
    _daemon_once(spool, base)
    return spool, {"update": upd, "regenerated": regen, "other": other}


@pytest.fixture
def spool(versioned_spool: tuple[Path, dict[str, str]]) -> Path:
    """The versioned spool (overrides conftest's empty one in this module)."""
    return versioned_spool[0]


@pytest.fixture
def versioned(versioned_spool: tuple[Path, dict[str, str]]) -> dict[str, str]:
    """Ids of the version events in the versioned spool."""
    return versioned_spool[1]


@pytest.fixture
def empty_spool(tmp_path: Path) -> Path:
    from poetctl.spool import SpoolLayout

    root = tmp_path / "empty"
    SpoolLayout(root).init()
    return root


def test_update_and_regenerated_write_current_and_history(spool: Path, versioned: dict[str, str]) -> None:
    """function.update and enhancement.regenerated each add history/<version>.json; current is the latest."""
    fn_dir = spool / "state" / FN
    current = json.loads((fn_dir / "current.json").read_text())
    assert current["function_name"] == FN
    assert current["version"] == "1.2.0"
    assert current["previous_version"] == "1.1.0"
    assert current["event_id"] == versioned["regenerated"]
    assert current["reason"] == "false_positive_seasonal pattern detected"
    assert current["improvements"] == ["seasonal reference window"]
    assert current["source_event_type"] == "enhancement.regenerated"
    assert sorted(p.name for p in (fn_dir / "history").iterdir()) == ["1.1.0.json", "1.2.0.json"]
    h11 = json.loads((fn_dir / "history" / "1.1.0.json").read_text())
    assert h11["version"] == "1.1.0" and h11["previous_version"] == "1.0.0"
    assert h11["event_id"] == versioned["update"]
    assert h11["changes"] == [{"type": "params", "description": "drift threshold 0.5 -> 0.7"}]
    assert h11["source_event_type"] == "function.update"
    assert json.loads((fn_dir / "history" / "1.2.0.json").read_text()) == current
    assert (spool / "events" / "processed" / f"{versioned['regenerated']}.json").exists()


def test_state_store_history_is_oldest_first(spool: Path, versioned: dict[str, str]) -> None:
    """StateStore.history lists versions in the order they were recorded."""
    from poetctl.spool import SpoolLayout

    store = StateStore(SpoolLayout(spool))
    assert [h["version"] for h in store.history(FN)] == ["1.1.0", "1.2.0"]
    assert store.functions() == [FN, "score_model"]


def test_rehandling_a_version_event_keeps_its_history(
    tmp_path: Path, versioned_spool: tuple[Path, dict[str, str]], run_cli: Any
) -> None:
    """Replaying the regenerated event (processed -> pending, daemon --once) rewrites identical state."""
    spool = tmp_path / "copy"
    shutil.copytree(versioned_spool[0], spool, symlinks=True)
    versioned = versioned_spool[1]
    fn_dir = spool / "state" / FN
    before = {p.name: p.read_bytes() for p in (fn_dir / "history").iterdir()}
    cur = (fn_dir / "current.json").read_bytes()
    name = f"{versioned['regenerated']}.json"
    (spool / "events" / "processed" / name).rename(spool / "events" / "pending" / name)
    proc = run_cli("--spool", spool, "daemon", "--once")
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in (fn_dir / "history").iterdir()} == before
    assert (fn_dir / "current.json").read_bytes() == cur


def test_state_show_table(spool: Path, versioned: dict[str, str], run_cli: Any) -> None:
    """`state show FN --output table` prints the current version and every history row."""
    proc = run_cli("--spool", spool, "state", "show", FN, "--output", "table", env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{FN} version 1.2.0 (previous 1.1.0)" in out
    assert "History" in out
    assert "1.1.0" in out and "1.0.0" in out  # 1.1.0's row shows its previous version
    assert versioned["regenerated"] in out and versioned["update"] in out
    assert out.index(versioned["update"]) < out.index(versioned["regenerated"])


def test_state_show_json(spool: Path, versioned: dict[str, str], run_cli: Any) -> None:
    """`state show FN --output json` prints {"current": ..., "history": [...]}."""
    proc = run_cli("--spool", spool, "state", "show", FN, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"current", "history"}
    assert doc["current"] == json.loads((spool / "state" / FN / "current.json").read_text())
    assert [h["version"] for h in doc["history"]] == ["1.1.0", "1.2.0"]
    assert [h["event_id"] for h in doc["history"]] == [versioned["update"], versioned["regenerated"]]
    assert proc.stderr == ""


def test_state_show_in_a_pipe_is_jsonl(spool: Path, versioned: dict[str, str], run_cli: Any) -> None:
    """Without --output, a pipe gets one JSON line with current and history."""
    proc = run_cli("--spool", spool, "state", "show", FN)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["current"]["version"] == "1.2.0"
    assert len(doc["history"]) == 2


def test_state_show_unknown_function_exits_66(spool: Path, versioned: dict[str, str], run_cli: Any) -> None:
    """`state show` of a function without state exits 66 naming it, with nothing on stdout."""
    proc = run_cli("--spool", spool, "state", "show", "no_such_fn")
    assert proc.returncode == 66
    assert "no_such_fn" in proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_state_show_missing_spool_exits_66(tmp_path: Path, run_cli: Any) -> None:
    """`state show` on a spool that does not exist exits 66 and creates nothing."""
    missing = tmp_path / "nowhere"
    proc = run_cli("--spool", missing, "state", "show", FN)
    assert proc.returncode == 66
    assert "nowhere" in proc.stderr
    assert not missing.exists()


@pytest.mark.parametrize("name", ["../state", "../../etc/passwd", "..", "/etc", "detect_drift/../x", ".hidden"])
def test_state_show_refuses_path_escaping_name(spool: Path, versioned: dict[str, str], run_cli: Any, name: str) -> None:
    """A function name that could escape state/ is refused (65) with a message naming the rule."""
    proc = run_cli("--spool", spool, "state", "show", name)
    assert proc.returncode in (65, 66), proc.stderr
    assert "function name" in proc.stderr and "not allowed" in proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_state_store_refuses_path_escaping_name(empty_spool: Path) -> None:
    """StateStore never joins an unchecked function name or version into a path."""
    from poetctl.spool import SpoolLayout

    spool = empty_spool
    store = StateStore(SpoolLayout(spool))
    with pytest.raises(InvalidData, match="function name"):
        store.record_version("../evil", "1.0.0", {})
    with pytest.raises(InvalidData, match="version"):
        store.record_version(FN, "../1.0.0", {})
    assert not (spool / "evil").exists()
    assert not (spool / "state" / FN).exists() or not any((spool / "state" / FN / "history").iterdir())


def test_emit_refuses_path_escaping_function_name(empty_spool: Path) -> None:
    """A function.update whose function_name could escape state/ is refused at emit (nothing written)."""
    router = EventRouter(spool=empty_spool)
    with pytest.raises(InvalidData):
        router.emit("function.update", update_payload("1", "2", fn="../evil"))
    assert list(router.layout.pending.iterdir()) == []


def test_state_list(spool: Path, versioned: dict[str, str], run_cli: Any) -> None:
    """`state list --output json` lists every function with state and its current version."""
    proc = run_cli("--spool", spool, "state", "list", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["function_name"], r["version"]) for r in rows] == [(FN, "1.2.0"), ("score_model", "0.2")]
    assert all(r["updated_at"].endswith("Z") for r in rows)


def test_state_list_table_and_empty(empty_spool: Path, run_cli: Any) -> None:
    """`state list` on a spool without state prints no rows and exits 0."""
    spool = empty_spool
    proc = run_cli("--spool", spool, "state", "list", "--output", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    proc = run_cli("--spool", spool, "state", "list", "--output", "table")
    assert proc.returncode == 0, proc.stderr
    assert "Functions" in proc.stdout
