"""The typer-free `emit` route must behave exactly like the typer command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poetctl.cli.fastpath import parse
from poetctl.spool import SpoolLayout

SAMPLES = Path(__file__).parent / "samples"


def _run(args: list[str], cwd: Path, fast: bool, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET")}
    if not fast:
        env["POETCTL_NO_FASTPATH"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "poetctl", *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=60
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["emit", "drift.detected", "p.json"], {"event_type": "drift.detected", "payload": "p.json"}),
        (["emit", "t.x", '{"a": 1}'], {"event_type": "t.x", "payload": '{"a": 1}'}),
        (["emit", "t.x", "-", "--id-from", "run.id"], {"id_from": "run.id", "payload": "-"}),
        (["--spool", "s", "emit", "t.x", "-", "--id=k1"], {"root_spool": "s", "payload": "-", "event_id": "k1"}),
        (["emit", "t.x", "--source", "a", "--source", "b"], {"source": "b", "payload": None}),
        (["--config=c.toml", "emit", "t.x", "--correlation-id", "c"], {"root_config": "c.toml", "correlation_id": "c"}),
    ],
)
def test_parse_accepts_plain_emit_calls(argv: list[str], expected: dict[str, str | None]) -> None:
    """Plain emit calls are parsed, the last occurrence of an option winning as in click."""
    got = parse(argv)
    assert got is not None
    for k, v in expected.items():
        assert got.get(k) == v


@pytest.mark.parametrize(
    "argv",
    [
        ["emit", "--help"],
        ["emit", "-h"],
        ["emit", "--batch", "f.jsonl"],
        ["emit", "t.x", "--skip-invalid"],
        ["emit"],
        ["emit", "a.b", "c", "d"],
        ["emit", "a.b", "--source"],
        ["--verbose", "emit", "a.b"],
        ["emit", "a.b", "--", "x"],
        ["status"],
    ],
)
def test_parse_leaves_everything_else_to_typer(argv: list[str]) -> None:
    """Help, batches, flags, wrong arity and unknown options are not handled by the fast path."""
    assert parse(argv) is None


CASES = {
    "valid": ["emit", "drift.detected", "good.json", "--correlation-id", "c-1", "--source", "t"],
    "schema_violation": ["emit", "drift.detected", "bad.json"],
    "unknown_type": ["emit", "no.such", "good.json"],
    "missing_file": ["emit", "drift.detected", "nope.json"],
    "bad_id": ["emit", "drift.detected", "good.json", "--id", "../x"],
    "stdin": ["emit", "drift.detected", "-", "--environment", "staging"],
    "extra_positional_dash": ["emit", "drift.detected", "-"],
    "inline_json": ["emit", "drift.detected", "INLINE"],
    "inline_json_leading_space": ["emit", "drift.detected", " \n INLINE"],
    "inline_bad_json": ["emit", "drift.detected", '{"function_name": '],
    "over_long_file": ["emit", "drift.detected", "/dev/zero"],
    "over_long_stdin": ["emit", "drift.detected", "-"],
    "no_spool": ["emit", "drift.detected", "good.json"],
    "id_from": ["emit", "drift.detected", "good.json", "--id-from", "function_name"],
    "id_from_missing_field": ["emit", "drift.detected", "good.json", "--id-from", "nope"],
    "id_and_id_from": ["emit", "drift.detected", "good.json", "--id", "k", "--id-from", "function_name"],
    "quarantined_id": ["emit", "drift.detected", "good.json", "--id", "q-1"],
    "dead_id": ["emit", "drift.detected", "good.json", "--id", "d-1"],
}
SUCCEEDS = {"valid", "stdin", "extra_positional_dash", "inline_json", "inline_json_leading_space", "id_from"}


def _prepare(spool: Path, case: str) -> None:
    """The spool a case starts from: none for no_spool, an event in corrupt/ or dead/ for those cases."""
    if case == "no_spool":
        return
    layout = SpoolLayout(spool)
    layout.init()
    if case == "quarantined_id":
        (layout.corrupt / "q-1.json").write_text("{not json")
        (layout.corrupt / "q-1.json.reason").write_text(json.dumps({"reason": "bad_json", "detail": "line 1"}))
    if case == "dead_id":
        (layout.dead / "d-1.json").write_text("{}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_and_typer_routes_agree(tmp_path: Path, case: str) -> None:
    """Exit code, stderr and the stored event are the same with and without the fast path."""
    good = json.loads((SAMPLES / "drift.detected.json").read_text())["valid"][0]
    bad = json.loads((SAMPLES / "drift.detected.json").read_text())["invalid"][0]["payload"]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    args = [a.replace("INLINE", json.dumps(good)) for a in CASES[case]]
    stdin = None
    if case in ("stdin", "extra_positional_dash"):
        stdin = json.dumps(good).encode()
    if case == "over_long_stdin":
        stdin = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    results = []
    for fast in (True, False):
        spool = tmp_path / f"spool-{fast}"
        _prepare(spool, case)
        r = _run(["--spool", str(spool), *args], tmp_path, fast, stdin)
        stored = []
        pending = spool / "events" / "pending"
        if pending.is_dir():
            for f in sorted(pending.glob("*.json")):
                ev = json.loads(f.read_bytes())
                stored.append({k: v for k, v in ev.items() if k not in ("id", "timestamp", "checksum")})
        out = r.stdout.decode().split()
        if case == "id_from":
            out = out + [p.name for p in pending.glob("*.json")]
        results.append(
            (
                r.returncode,
                r.stderr.decode().replace(str(spool), "SPOOL"),
                out if case == "id_from" else len(out),
                stored,
            )
        )
    assert results[0] == results[1]
    if case in SUCCEEDS:
        assert results[0][0] == 0 and len(results[0][3]) == 1
    elif case == "no_spool":
        assert results[0][0] == 66 and "no spool at SPOOL" in results[0][1]
        assert not (tmp_path / "spool-True").exists() and not (tmp_path / "spool-False").exists()
    elif case == "dead_id":
        assert results[0][0] == 0 and results[0][3] == [] and "exists in dead/" in results[0][1]
    elif case == "id_and_id_from":
        assert results[0][0] == 2 and results[0][3] == []
    else:
        assert results[0][0] in (65, 66) and results[0][3] == []
    if case == "quarantined_id":
        assert results[0][0] == 65 and "id q-1 exists in corrupt/ (quarantined: bad_json: line 1)" in results[0][1]
    if case.startswith("over_long"):
        assert results[0][0] == 65 and "1048576 bytes (max_event_bytes)" in results[0][1]
