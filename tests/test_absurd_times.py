"""Absurd values already on disk (hand-made files with valid checksums): timestamps and expiry times no date
can show (1e300, year 10000, -1e300), dead_at likewise, and fields of the wrong type. Readers never crash:
tables show the raw number, JSON keeps it exact, CloudEvents carry it without `time`."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv
from terminal import run_on_tty

from poetctl.cloudevents import from_cloudevent
from poetctl.event import Event
from poetctl.ids import uuid7
from poetctl.spool import SpoolLayout

ABSURD = [1e300, 253402300800, -1e300, 1e20]
# As JSON writes them: what a table shows for a time no date can show.
SHOWN = {1e300: "1e+300", 253402300800: "253402300800", -1e300: "-1e+300", 1e20: "1e+20"}


def envelope(ts: float, **extra: object) -> dict[str, object]:
    d: dict[str, object] = {
        "id": uuid7(),
        "type": "system.health",
        "source": "test",
        "timestamp": ts,
        "topic": "poet/system/health",
        "correlation_id": "absurd",
        "metadata": {"version": "1.0", "environment": "dev", "service": "poet"},
        "payload": {"service": "x", "status": "healthy"},
    }
    d.update(extra)
    return d


def seal(directory: Path, d: dict[str, object]) -> bytes:
    """Write ``d`` sealed (valid checksum) as ``<id>.json`` in ``directory``; the bytes written."""
    raw = Event.from_dict(d).seal().to_json()
    (directory / f"{d['id']}.json").write_bytes(raw)
    return raw


@dataclass
class Absurd:
    cwd: Path
    spool: Path
    stored: dict[str, bytes]  # id -> file bytes
    root: str  # the sane event the absurd ones hang from


@pytest.fixture(scope="module")
def absurd(tmp_path_factory: pytest.TempPathFactory) -> Absurd:
    """Events in pending, processed and dead with absurd timestamps and expiry times, under one sane cause."""
    cwd = tmp_path_factory.mktemp("absurd")
    layout = SpoolLayout(cwd / "spool")
    layout.init()
    stored: dict[str, bytes] = {}
    root = envelope(time.time())
    stored[str(root["id"])] = seal(layout.processed, root)
    dirs = [layout.pending, layout.processed, layout.dead]
    for i, ts in enumerate(ABSURD):
        for j, d in enumerate(dirs):
            env = envelope(ts, causation_id=root["id"], expires_at=ABSURD[(i + j) % len(ABSURD)])
            stored[str(env["id"])] = seal(d, env)
            if d == layout.dead:
                error = {"reason": "expired", "attempts": 0, "error": "expired", "dead_at": ts}
                (d / f"{env['id']}.error").write_text(json.dumps(error))
    return Absurd(cwd, layout.root, stored, str(root["id"]))


def run(a: Absurd, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        cli_argv("--spool", a.spool, *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=clean_env({"COLUMNS": "250"}),
        cwd=a.cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr
    return r.stdout


def test_tail_table_shows_the_raw_numbers(absurd: Absurd) -> None:
    """tail -o table prints every event; a time no date can show appears as its number."""
    out = ok(run(absurd, "tail", "-n", "100", "-o", "table"))
    assert len(out.splitlines()) == 1 + len(absurd.stored)
    for shown in SHOWN.values():
        assert any(line.startswith(shown + " ") for line in out.splitlines()), shown


def test_tail_on_a_terminal_and_following(absurd: Absurd) -> None:
    """The rich table (TTY) and the streaming table of -f take the same values."""
    code, out, err = run_on_tty(absurd.cwd, "--spool", absurd.spool, "tail", "-n", "100")
    assert code == 0 and "Traceback" not in err, err
    assert "1e+300" in out and "253402300800" in out
    out = ok(run(absurd, "tail", "-f", "-n", "100", "-o", "table", "--idle-timeout", "0.1"))
    assert "-1e+300" in out


def test_tail_json_and_jsonl_are_exact(absurd: Absurd) -> None:
    """-o jsonl prints each stored file byte for byte; -o json keeps the numbers."""
    out = ok(run(absurd, "tail", "-n", "100", "-o", "jsonl"))
    assert sorted(out.encode().splitlines()) == sorted(absurd.stored.values())
    docs = json.loads(ok(run(absurd, "tail", "-n", "100", "-o", "json")))
    assert {d["timestamp"] for d in docs} >= set(ABSURD)


def test_tail_cloudevents_round_trip_without_time(absurd: Absurd) -> None:
    """-o cloudevents: `time` is left out where RFC 3339 cannot show the timestamp; poettimestamp keeps it
    exact, so from_cloudevent gives back the very envelope (checksum included)."""
    out = ok(run(absurd, "tail", "-n", "100", "-o", "cloudevents"))
    ces = [json.loads(line) for line in out.splitlines()]
    assert len(ces) == len(absurd.stored)
    for ce in ces:
        env = from_cloudevent(ce)
        assert env == json.loads(absurd.stored[ce["id"]])
        if env["timestamp"] in ABSURD:
            assert "time" not in ce and json.loads(ce["poettimestamp"]) == env["timestamp"]


@pytest.mark.parametrize("fmt", ["tree", "json", "jsonl", "dot", "mermaid"])
def test_correlate_renders_absurd_times(absurd: Absurd, fmt: str) -> None:
    """correlate in every format: absurd times and hops never crash it."""
    out = ok(run(absurd, "correlate", "absurd", "-o", fmt))
    if fmt == "tree":
        assert len(out.splitlines()) == len(absurd.stored) and "1e+300" in out
    if fmt in ("json", "jsonl"):
        nodes = json.loads(out) if fmt == "json" else [json.loads(x) for x in out.splitlines()]
        assert len(nodes) == len(absurd.stored)
        assert {n["timestamp"] for n in nodes} >= set(ABSURD)
        assert all(n["time"] is None for n in nodes if n["timestamp"] in ABSURD)


def test_correlate_expect_with_absurd_times(absurd: Absurd) -> None:
    """--expect and --within compute durations from absurd times without crashing."""
    r = run(absurd, "correlate", "absurd", "-o", "jsonl", "--expect", "system.*>system.*", "--within", "1h")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert "chain" in r.stderr


def test_status_and_dead_list_with_absurd_times(absurd: Absurd) -> None:
    """status (all forms) and dead list (table: raw number for dead_at; jsonl: exact) never crash."""
    ok(run(absurd, "status", "-o", "table"))
    assert json.loads(ok(run(absurd, "status", "-o", "json")))["counts"]["dead"] == len(ABSURD)
    r = run(absurd, "status", "--check", "--max-dead", "100")
    assert r.returncode in (0, 1, 2) and r.stdout.startswith("POET ")
    table = ok(run(absurd, "dead", "list", "-o", "table"))
    assert "1e+300" in table and "253402300800" in table
    rows = [json.loads(x) for x in ok(run(absurd, "dead", "list", "-o", "jsonl")).splitlines()]
    assert [r["dead_at"] for r in rows] == sorted(ABSURD)


def test_fields_of_the_wrong_type_are_reported_and_skipped(tmp_path: Path) -> None:
    """A sealed file whose timestamp is text, or that lacks `type`, is reported as damaged; the rest shows."""
    layout = SpoolLayout(tmp_path / "spool")
    layout.init()
    good = envelope(time.time())
    seal(layout.processed, good)
    bad_ts = envelope(time.time(), timestamp="soon")
    bad_payload = envelope(time.time(), payload=["not", "an", "object"])
    for d in (bad_ts, bad_payload):
        seal(layout.processed, d)
    no_type = envelope(time.time())
    del no_type["type"]
    from poetctl.event import compute_checksum

    no_type["checksum"] = compute_checksum(no_type)
    (layout.processed / f"{no_type['id']}.json").write_text(json.dumps(no_type))
    for args in (("tail", "-o", "table"), ("tail", "-o", "jsonl"), ("correlate", "absurd", "-o", "tree")):
        p = subprocess.run(
            cli_argv("--spool", layout.root, *args),
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert str(good["id"]) in p.stdout
        assert p.stderr.count("bad_envelope") == 3, p.stderr
