"""The typer-free `emit` route must behave exactly like the typer command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poetctl.cli.fastpath import parse

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


@pytest.mark.parametrize(
    "case",
    ["valid", "schema_violation", "unknown_type", "missing_file", "bad_id", "stdin", "extra_positional_dash"],
)
def test_fast_and_typer_routes_agree(tmp_path: Path, case: str) -> None:
    """Exit code, stderr and the stored event are the same with and without the fast path."""
    good = json.loads((SAMPLES / "drift.detected.json").read_text())["valid"][0]
    bad = json.loads((SAMPLES / "drift.detected.json").read_text())["invalid"][0]["payload"]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    stdin = None
    args = {
        "valid": ["emit", "drift.detected", "good.json", "--correlation-id", "c-1", "--source", "t"],
        "schema_violation": ["emit", "drift.detected", "bad.json"],
        "unknown_type": ["emit", "no.such", "good.json"],
        "missing_file": ["emit", "drift.detected", "nope.json"],
        "bad_id": ["emit", "drift.detected", "good.json", "--id", "../x"],
        "stdin": ["emit", "drift.detected", "-", "--environment", "staging"],
        "extra_positional_dash": ["emit", "drift.detected", "-"],
    }[case]
    if case in ("stdin", "extra_positional_dash"):
        stdin = json.dumps(good).encode()
    results = []
    for fast in (True, False):
        spool = tmp_path / f"spool-{fast}"
        r = _run(["--spool", str(spool), *args], tmp_path, fast, stdin)
        stored = []
        pending = spool / "events" / "pending"
        if pending.is_dir():
            for f in sorted(pending.glob("*.json")):
                ev = json.loads(f.read_bytes())
                stored.append({k: v for k, v in ev.items() if k not in ("id", "timestamp", "checksum")})
        results.append((r.returncode, r.stderr.decode().replace(str(spool), "SPOOL"), len(r.stdout.split()), stored))
    assert results[0] == results[1]
    if case in ("valid", "stdin", "extra_positional_dash"):
        assert results[0][0] == 0 and results[0][2] == 1 and len(results[0][3]) == 1
    else:
        assert results[0][0] in (65, 66) and results[0][3] == []
