"""Damaged state, feedback, learning and dead-letter error files (nested deep, duplicate keys, wide
integers, wrong shapes): readers report them in one line and never crash, fsck counts them as damaged, and the
learning engine refuses a damaged learning.json without replacing it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers.harness import events_dir, run_cli, write_config
from daemon_helpers.spool import FakeDrift, put_event

from poetctl import EventRouter
from poetctl.backends.fs.storage import FeedbackStore, StateStore
from poetctl.errors import InvalidData, SpoolIOError
from poetctl.handlers.learning import LearningEngine
from poetctl.spool import SpoolLayout

FN = "detect_drift"


def deep(levels: int) -> str:
    """A state-looking object with a list nested ``levels`` deep inside."""
    return '{"function_name": "detect_drift", "version": "1.0.0", "x": ' + "[" * levels + "]" * levels + "}"


# Each is damaged in a way bare orjson.loads accepts (or, past its own limit, rejects as bad JSON).
DAMAGED = {
    "deep_600": deep(600),
    "deep_70": deep(70),
    "deep_2000": deep(2000),
    "duplicate_key": '{"function_name": "detect_drift", "version": "1.0.0", "version": "6.6.6"}',
    "wide_int": '{"function_name": "detect_drift", "version": "1.0.0", "n": 123456789012345678901234567890}',
}


def state_file(sp: Path, text: str, name: str = "current.json") -> Path:
    d = sp / "state" / FN if name == "current.json" else sp / "state" / FN / "history"
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(text)
    return path


def fsck_problems(tmp_path: Path, sp: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)["problems"]


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
@pytest.mark.parametrize("fmt", ["json", "table"])
def test_state_show_damaged_current_is_one_line_and_65(tmp_path: Path, sp: Path, damage: str, fmt: str) -> None:
    """state show on a damaged current.json: one error line naming the file, exit 65, no traceback."""
    path = state_file(sp, DAMAGED[damage])
    r = run_cli(tmp_path, "--spool", sp, "state", "show", FN, "-o", fmt)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("poetctl: error:")]
    assert r.returncode == 65 and "Traceback" not in r.stderr, r.stderr
    assert len(errors) == 1 and str(path) in errors[0], r.stderr


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_state_list_reports_damaged_current_and_exits_65(tmp_path: Path, sp: Path, damage: str) -> None:
    """state list: the damaged function is reported on stderr and left out, the others list, exit 65."""
    state_file(sp, DAMAGED[damage])
    (sp / "state" / "other_fn").mkdir()
    (sp / "state" / "other_fn" / "current.json").write_text('{"function_name": "other_fn", "version": "2"}')
    r = run_cli(tmp_path, "--spool", sp, "state", "list", "-o", "json")
    assert r.returncode == 65 and "Traceback" not in r.stderr, r.stderr
    assert [row["function_name"] for row in json.loads(r.stdout)] == ["other_fn"]


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_state_history_skips_a_damaged_version_file(sp: Path, damage: str) -> None:
    """history() leaves out a damaged version file and keeps the good ones (fsck reports the bad one)."""
    state_file(sp, '{"version": "1.0.0", "updated_at": 1}')
    state_file(sp, '{"version": "1.0.0", "updated_at": 1}', "1.0.0.json")
    state_file(sp, DAMAGED[damage], "2.0.0.json")
    assert [h["version"] for h in StateStore(SpoolLayout(sp)).history(FN)] == ["1.0.0"]


@pytest.mark.parametrize("bad", ['"yesterday"', "null", "true", "[1]", '{"t": 1}'])
def test_history_with_non_numeric_updated_at_shows_and_fsck_reports_it(tmp_path: Path, sp: Path, bad: str) -> None:
    """A hand-made version file whose updated_at is not a number: state show lists it last, fsck reports it."""
    state_file(sp, '{"version": "2.0.0", "updated_at": 20}')
    state_file(sp, '{"version": "2.0.0", "updated_at": 20}', "2.0.0.json")
    state_file(sp, f'{{"version": "0.1.0", "updated_at": {bad}}}', "0.1.0.json")
    state_file(sp, '{"version": "1.0.0", "updated_at": 10}', "1.0.0.json")
    assert [h["version"] for h in StateStore(SpoolLayout(sp)).history(FN)] == ["1.0.0", "2.0.0", "0.1.0"]
    for fmt in ("json", "table"):
        r = run_cli(tmp_path, "--spool", sp, "state", "show", FN, "-o", fmt)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "0.1.0" in r.stdout
    code, problems = fsck_problems(tmp_path, sp)
    assert code == 1 and [(p["kind"], p["path"]) for p in problems] == [
        ("bad_state", f"state/{FN}/history/0.1.0.json")
    ], problems
    assert "updated_at" in problems[0]["detail"]


def check_bad_state(tmp_path: Path, sp: Path, path: Path, text: str) -> None:
    """fsck and fsck --repair report ``path`` as bad_state (and nothing else) and leave it as it is."""
    for args in ((), ("--repair",)):
        code, problems = fsck_problems(tmp_path, sp, *args)
        assert code == 1 and [(p["kind"], p["path"], p["repaired"]) for p in problems] == [
            ("bad_state", str(path.relative_to(sp)), False)
        ], problems
    assert path.read_text() == text


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
@pytest.mark.parametrize("where", ["current.json", "1.0.0.json"])
def test_fsck_reports_damaged_state_files_and_repair_leaves_them(
    tmp_path: Path, sp: Path, damage: str, where: str
) -> None:
    """fsck counts a deep, duplicate-key or wide-integer state file as bad_state; --repair leaves it by hand."""
    check_bad_state(tmp_path, sp, state_file(sp, DAMAGED[damage], where), DAMAGED[damage])


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
@pytest.mark.parametrize("which", ["pending", "processed"])
def test_fsck_reports_and_quarantines_damaged_feedback(tmp_path: Path, sp: Path, damage: str, which: str) -> None:
    """A deep, duplicate-key or wide-integer feedback record is bad_feedback; --repair quarantines it."""
    d = sp / "feedback" / which
    d.mkdir(parents=True, exist_ok=True)
    (d / "fb-1.json").write_text(DAMAGED[damage])
    code, problems = fsck_problems(tmp_path, sp)
    assert code == 1 and [(p["kind"], p["path"]) for p in problems] == [("bad_feedback", f"feedback/{which}/fb-1.json")]
    code, problems = fsck_problems(tmp_path, sp, "--repair")
    assert code == 0 and problems[0]["repaired"], problems
    assert not (d / "fb-1.json").exists()
    assert (events_dir(sp, "corrupt") / "fb-1.json").read_text() == DAMAGED[damage]


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_feedback_store_skips_damaged_records(sp: Path, damage: str) -> None:
    """FeedbackStore yields the good records and skips a damaged one (and one that is not an object)."""
    store = FeedbackStore(SpoolLayout(sp))
    store.add("good", {"ok": 1})
    (sp / "feedback" / "pending" / "bad.json").write_text(DAMAGED[damage])
    (sp / "feedback" / "pending" / "list.json").write_text("[1, 2]")
    assert list(store.pending()) == [("good", {"ok": 1})]


# -- the learning engine -----------------------------------------------------------------------
# learning.json is held to orjson's own depth bound (255 levels written back), not parse_json's 64.
LEARNING_DAMAGED = {
    **{k: v for k, v in DAMAGED.items() if k != "deep_70"},
    "deep_300": deep(300),
    "not_an_object": "[]",
    "detections_a_list": '{"detections": [], "feedback": {}}',
    "decisions_a_string": '{"decisions": "x"}',
    "not_json": '{"detections": {',
}


def drift() -> FakeDrift:
    payload = {"execution_id": "ex-1", "function_name": FN, "model_name": "m", "drift_score": 0.7}
    return FakeDrift("drift-1", 1.7e9, payload)


@pytest.mark.parametrize("damage", LEARNING_DAMAGED, ids=list(LEARNING_DAMAGED))
def test_learning_engine_refuses_damaged_state_and_never_replaces_it(sp: Path, damage: str) -> None:
    """Every engine call on a damaged learning.json raises InvalidData naming it; the file is unchanged."""
    path = sp / "state" / "learning.json"
    path.write_text(LEARNING_DAMAGED[damage])
    engine = LearningEngine(SpoolLayout(sp))
    calls = [
        lambda: engine.record_drift_detection(drift(), "high"),
        lambda: engine.incorporate_human_feedback(
            feedback_id="fb", execution_id="ex-1", was_real_drift=False, confidence=1.0, at=1.7e9
        ),
        lambda: engine.decide(FN, "1.0.0", 1.7e9, "cause-1"),
        lambda: engine.mark_reported(FN, [], "1.0.0"),
        engine.snapshot,
    ]
    for call in calls:
        with pytest.raises(InvalidData) as info:
            call()
        assert str(path) in str(info.value)
    assert path.read_text() == LEARNING_DAMAGED[damage]
    assert sorted(os.listdir(path.parent)) == ["learning.json"], "no tmp file or replacement left beside it"


@pytest.mark.parametrize("damage", LEARNING_DAMAGED, ids=list(LEARNING_DAMAGED))
def test_fsck_reports_what_the_learning_engine_refuses(tmp_path: Path, sp: Path, damage: str) -> None:
    """A learning.json the engine refuses is bad_state to fsck, and --repair leaves it for a person."""
    path = sp / "state" / "learning.json"
    path.write_text(LEARNING_DAMAGED[damage])
    check_bad_state(tmp_path, sp, path, LEARNING_DAMAGED[damage])


def test_fsck_and_the_learning_engine_agree_on_a_usable_learning_json(tmp_path: Path, sp: Path) -> None:
    """A learning.json 70 levels deep is usable: the engine reads and keeps it, fsck finds nothing."""
    path = sp / "state" / "learning.json"
    path.write_text('{"detections": {}, "extra": ' + "[" * 70 + "]" * 70 + "}")
    LearningEngine(SpoolLayout(sp)).record_drift_detection(drift(), "high")
    assert "ex-1" in json.loads(path.read_text())["detections"] and '"extra":[[[' in path.read_text()
    assert fsck_problems(tmp_path, sp) == (0, [])


def test_learning_engine_does_not_read_through_a_linked_learning_json(tmp_path: Path, sp: Path) -> None:
    """A symlinked state/learning.json is refused (74), never read or replaced."""
    outside = tmp_path / "outside.json"
    outside.write_text('{"detections": {}}')
    os.symlink(outside, sp / "state" / "learning.json")
    with pytest.raises(SpoolIOError):
        LearningEngine(SpoolLayout(sp)).record_drift_detection(drift(), "high")
    assert os.path.islink(sp / "state" / "learning.json") and outside.read_text() == '{"detections": {}}'


@pytest.mark.parametrize("damage", ["duplicate_key", "deep_600", "detections_a_list"])
def test_daemon_dead_letters_drift_events_while_learning_json_is_damaged(
    tmp_path: Path, sp: Path, damage: str, samples: dict[str, Any]
) -> None:
    """daemon --once, damaged learning.json: no crash, the drift event dead-lettered naming the file, the file kept."""
    path = sp / "state" / "learning.json"
    path.write_text(LEARNING_DAMAGED[damage])
    payload = samples["drift.detected"]["valid"][0]
    eid = EventRouter(spool=sp).emit("drift.detected", payload)
    cfg = write_config(tmp_path, max_attempts=1)
    r = run_cli(tmp_path, "--spool", sp, "--config", cfg, "daemon", "--once")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # 1: something was dead-lettered
    error = json.loads((events_dir(sp, "dead") / f"{eid}.error").read_text())
    assert "learning.json" in json.dumps(error), error
    assert path.read_text() == LEARNING_DAMAGED[damage]


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_dead_show_with_a_damaged_error_record_shows_no_error_and_fsck_reports_it(
    tmp_path: Path, sp: Path, damage: str
) -> None:
    """dead show prints the event with "error": null (no traceback); fsck calls the .error bad_error_record."""
    eid = put_event(sp, "dead")
    (events_dir(sp, "dead") / f"{eid}.error").write_text(DAMAGED[damage])
    for fmt in ("json", "jsonl"):
        r = run_cli(tmp_path, "--spool", sp, "dead", "show", eid, "-o", fmt)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        doc = json.loads(r.stdout)
        assert doc["event"]["id"] == eid and doc["error"] is None
    code, problems = fsck_problems(tmp_path, sp)
    assert code == 1 and [(p["kind"], p["path"]) for p in problems] == [
        ("bad_error_record", f"events/dead/{eid}.error")
    ]
