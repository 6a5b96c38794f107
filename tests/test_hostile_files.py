"""Hostile files on disk: nested hundreds of levels deep, with duplicate keys or integers beyond
64 bits, in pending/ and processed/. No command crashes on them; the daemon and fsck --repair
quarantine them as bad_json, the others report them, and good events are still handled."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import files_in

from poetctl import EventRouter
from poetctl.event import compute_checksum

DEPTHS = (256, 600, 1024, 5000)


def _nest(levels: int, compact: bool) -> str:
    sep = ":" if compact else ": "
    return '{"a"' + sep + ('{"a"' + sep).join([""] * levels) + "1" + "}" * levels if levels else "1"


def _write_deep(directory: Path, base: dict[str, Any], levels: int, good: bool, where: str) -> str:
    """An event nesting ``levels`` deep under payload or metadata; its checksum right or wrong.

    Both the file and its canonical form are written by hand: the stdlib encoder recurses
    and orjson gives up past 254 levels.
    """
    eid = f"deep-{where}-{levels}-{'good' if good else 'bad'}"
    d = json.loads(json.dumps(base))
    d["id"] = eid
    d[where]["extra"] = 1
    d.pop("checksum")
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    canonical = canonical.replace('"extra":1', '"extra":' + _nest(levels, True), 1)
    d["checksum"] = "sha256:" + (hashlib.sha256(canonical.encode()).hexdigest() if good else "0" * 64)
    text = json.dumps(d).replace('"extra": 1', '"extra": ' + _nest(levels, False), 1)
    assert text.count('{"a"') == levels
    (directory / f"{eid}.json").write_text(text)
    return eid


def _write_duplicate_key(directory: Path, base: dict[str, Any], where: str) -> str:
    """A payload key written twice; the checksum is right for what a last-wins parser keeps."""
    eid = f"dup-{where}"
    d = json.loads(json.dumps(base))
    d["id"] = eid
    d["payload"]["drift_score"] = 0.9
    d["checksum"] = compute_checksum(d)
    text = json.dumps(d).replace('"drift_score": 0.9', '"drift_score": 0.1, "drift_score": 0.9', 1)
    assert text.count('"drift_score"') == 2
    (directory / f"{eid}.json").write_text(text)
    return eid


def _write_long_integer(directory: Path, base: dict[str, Any], where: str) -> str:
    """An integer of 30 digits; the checksum is right for the float a lenient parser makes of it."""
    eid = f"longint-{where}"
    big = 123456789012345678901234567890
    d = json.loads(json.dumps(base))
    d["id"] = eid
    d["payload"]["data_characteristics"]["sample_size"] = float(big)
    d["checksum"] = compute_checksum(d)
    text = json.dumps(d).replace(repr(float(big)), str(big), 1)
    assert str(big) in text
    (directory / f"{eid}.json").write_text(text)
    return eid


@pytest.fixture(params=["deep", "duplicate_key", "long_integer"])
def hostile_spool(request: pytest.FixtureRequest, spool: Path, samples: dict[str, Any], run_cli: Any) -> dict[str, Any]:
    """A spool with handled good events in processed/, a fresh good one in pending/, and
    hostile files of one family in both."""
    router = EventRouter(spool=spool)
    payload = samples["drift.detected"]["valid"][0]
    done = [router.emit("drift.detected", payload, correlation_id="good-chain") for _ in range(2)]
    r = run_cli("--spool", spool, "daemon", "--once")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in files_in(spool / "events" / "processed")} >= {f"{e}.json" for e in done}
    waiting = router.emit("drift.detected", payload, correlation_id="good-chain")
    base = json.loads((spool / "events" / "processed" / f"{done[0]}.json").read_bytes())
    hostile: dict[str, list[str]] = {"pending": [], "processed": []}
    for state in hostile:
        directory = spool / "events" / state
        if request.param == "deep":
            for levels in DEPTHS:
                for good in (True, False):
                    hostile[state].append(_write_deep(directory, base, levels, good, "payload"))
            hostile[state].append(_write_deep(directory, base, 600, True, "metadata"))
        elif request.param == "duplicate_key":
            hostile[state].append(_write_duplicate_key(directory, base, state))
        else:
            hostile[state].append(_write_long_integer(directory, base, state))
    return {"spool": spool, "done": done, "waiting": waiting, "hostile": hostile}


def _no_crash(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert "RecursionError" not in r.stderr and "Recursion limit" not in r.stderr, r.stderr


def _reasons(spool: Path) -> dict[str, dict[str, Any]]:
    """Original file name -> its quarantine reason record."""
    out = {}
    for p in (spool / "events" / "corrupt").iterdir():
        if p.name.endswith(".reason"):
            info = json.loads(p.read_bytes())
            out[info["name"]] = info
    return out


def _expected_detail(eid: str) -> str:
    if eid.startswith("deep-"):
        return "nested deeper than 64 levels"
    if eid.startswith("dup-"):
        return 'duplicate key "drift_score"'
    return "does not fit in 64 bits"


def test_read_commands_report_hostile_files_and_show_good_events(hostile_spool: dict[str, Any], run_cli: Any) -> None:
    """tail, correlate, fsck, status, replay --dry-run and dead list run over hostile files without a traceback."""
    spool = hostile_spool["spool"]
    all_hostile = hostile_spool["hostile"]["pending"] + hostile_spool["hostile"]["processed"]

    r = run_cli("--spool", spool, "tail", "--state", "all", "-o", "jsonl")
    _no_crash(r)
    assert r.returncode == 0, r.stderr
    shown = {json.loads(line)["id"] for line in r.stdout.splitlines()}
    assert shown >= {*hostile_spool["done"], hostile_spool["waiting"]}
    assert not shown & set(all_hostile)

    r = run_cli("--spool", spool, "correlate", "good-chain", "-o", "json")
    _no_crash(r)
    assert r.returncode == 0, r.stderr
    for eid in hostile_spool["done"]:
        assert eid in r.stdout

    r = run_cli("--spool", spool, "fsck", "-o", "jsonl")
    _no_crash(r)
    assert r.returncode == 1, r.stderr  # problems found, none repaired
    reported = {}
    for line in r.stdout.splitlines():
        row = json.loads(line)
        if row.get("kind") == "corrupt_event":
            reported[Path(row["path"]).name[: -len(".json")]] = row["detail"]
    assert set(reported) >= set(all_hostile)
    for eid in all_hostile:
        assert reported[eid].startswith("bad_json"), (eid, reported[eid])
        assert _expected_detail(eid) in reported[eid], (eid, reported[eid])

    r = run_cli("--spool", spool, "status", "-o", "json")
    _no_crash(r)
    assert r.returncode == 0, r.stderr

    r = run_cli("--spool", spool, "replay", "--dry-run", "--all")
    _no_crash(r)
    assert r.returncode == 0, r.stderr
    for eid in hostile_spool["done"]:
        assert eid in r.stdout + r.stderr

    r = run_cli("--spool", spool, "dead", "list", "-o", "jsonl")
    _no_crash(r)
    assert r.returncode == 0, r.stderr


def test_daemon_quarantines_hostile_pending_files_and_handles_good_ones(
    hostile_spool: dict[str, Any], run_cli: Any
) -> None:
    """daemon --once moves every hostile pending file to corrupt/ as bad_json and processes the good event."""
    spool = hostile_spool["spool"]
    r = run_cli("--spool", spool, "daemon", "--once")
    _no_crash(r)
    assert r.returncode == 1, r.stderr  # something was quarantined
    assert (spool / "events" / "processed" / f"{hostile_spool['waiting']}.json").is_file()
    reasons = _reasons(spool)
    for eid in hostile_spool["hostile"]["pending"]:
        assert not (spool / "events" / "pending" / f"{eid}.json").exists()
        info = reasons[f"{eid}.json"]
        assert info["reason"] == "bad_json", info
        assert _expected_detail(eid) in info["detail"], info
    # A second start is clean: nothing is left to crash on.
    r = run_cli("--spool", spool, "daemon", "--once")
    _no_crash(r)
    assert r.returncode == 0, r.stderr


def test_fsck_repair_quarantines_hostile_files_everywhere(hostile_spool: dict[str, Any], run_cli: Any) -> None:
    """fsck --repair quarantines hostile files from pending/ and processed/; fsck is clean afterwards."""
    spool = hostile_spool["spool"]
    r = run_cli("--spool", spool, "fsck", "--repair", "-o", "jsonl")
    _no_crash(r)
    assert r.returncode == 0, r.stdout + r.stderr
    reasons = _reasons(spool)
    for state, ids in hostile_spool["hostile"].items():
        for eid in ids:
            assert not (spool / "events" / state / f"{eid}.json").exists()
            assert reasons[f"{eid}.json"]["reason"] == "bad_json", reasons[f"{eid}.json"]
    for eid in hostile_spool["done"]:
        assert (spool / "events" / "processed" / f"{eid}.json").is_file()
    assert (spool / "events" / "pending" / f"{hostile_spool['waiting']}.json").is_file()
    r = run_cli("--spool", spool, "fsck")
    _no_crash(r)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hand_written_deep_files_have_right_checksums(tmp_path: Path, samples: dict[str, Any]) -> None:
    """The 'good' deep files really carry the right checksum (checked at a depth orjson can hash)."""
    from poetctl.backends.fs.reader import decode_event

    router = EventRouter(spool=tmp_path / "s")
    ev, _ = router.build("drift.detected", samples["drift.detected"]["valid"][0])
    base = ev.to_dict()
    for where in ("payload", "metadata"):
        eid = _write_deep(tmp_path, base, 5, True, where)
        decoded = decode_event((tmp_path / f"{eid}.json").read_bytes(), None, expected_id=eid)
        assert decoded.id == eid
