"""Backpressure and throttling: [limits] max_pending / max_pending_bytes / sources, exit 75, 429, status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import clean_env, cli_argv
from serve_harness import DEFAULT_TABLE, TOKENS, Server

from poetctl.config import load_config
from poetctl.limits import Backpressure, parse_rate
from poetctl.router import EventRouter

HEALTH = '{"service": "svc", "status": "healthy"}'
EX_TEMPFAIL = 75


def setup(tmp_path: Path, limits: str) -> Path:
    """A spool and a poet.toml with ``limits`` (TOML lines after [limits]); returns the config path."""
    cfg = tmp_path / "poet.toml"
    cfg.write_text(f'storage_path = "spool"\n[limits]\n{limits}\n', encoding="utf-8")
    from poetctl.spool import SpoolLayout

    SpoolLayout(tmp_path / "spool").init()
    return cfg


def emit(run_cli: Any, cfg: Path, *extra: str, payload: str = HEALTH) -> Any:
    return run_cli("--config", cfg, "emit", "system.health", payload, *extra)


def pending(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool" / "events" / "pending").glob("*.json"))


def test_emit_over_max_pending_exits_75_and_writes_nothing(run_cli: Any, tmp_path: Path) -> None:
    """The event past max_pending is refused (75) with the count and the limit; fast path and typer path."""
    cfg = setup(tmp_path, "max_pending = 2")
    for _ in range(2):
        assert emit(run_cli, cfg).returncode == 0
    for extra in (["--wait", "0"], ["--wait=0", "--priority", "low"]):
        r = emit(run_cli, cfg, *extra)
        assert r.returncode == EX_TEMPFAIL, r.stderr
        assert "spool full: 2 pending (limit 2); retry later" in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == ""
    assert len(pending(tmp_path)) == 2


def test_emit_over_max_pending_bytes_exits_75(run_cli: Any, tmp_path: Path) -> None:
    """Bytes count too: an event that would take pending past max_pending_bytes is refused."""
    cfg = setup(tmp_path, "max_pending_bytes = 600")
    assert emit(run_cli, cfg).returncode == 0
    r = emit(run_cli, cfg, "--wait", "0")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "bytes pending (limit 600); retry later" in r.stderr
    assert len(pending(tmp_path)) == 1


def test_emit_waits_for_room_a_daemon_makes(run_cli: Any, tmp_path: Path) -> None:
    """A full spool: emit --wait waits; once a daemon drains the spool it commits and exits 0."""
    cfg = setup(tmp_path, "max_pending = 1")
    assert emit(run_cli, cfg).returncode == 0
    waiting = subprocess.Popen(
        cli_argv("--config", cfg, "emit", "system.health", HEALTH, "--wait", "120"),
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        d = run_cli("--config", cfg, "daemon", "--once", "--no-builtin-handlers")
        assert d.returncode == 0, d.stderr
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert [p.name for p in pending(tmp_path)] == [out.strip() + ".json"]


def test_batch_stops_at_the_first_event_that_does_not_fit(run_cli: Any, tmp_path: Path) -> None:
    """emit --batch commits what fits, prints those ids, and exits 75 saying how many were committed."""
    cfg = setup(tmp_path, "max_pending = 5")
    for _ in range(2):
        assert emit(run_cli, cfg).returncode == 0
    b = tmp_path / "b.jsonl"
    b.write_text("".join(HEALTH + "\n" for _ in range(6)))
    r = run_cli("--config", cfg, "emit", "--batch", b, "--type", "system.health", "--wait", "0")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 3
    assert "spool full: 5 pending (limit 5)" in r.stderr and "3 of 6 events were committed" in r.stderr
    assert {p.name[:-5] for p in pending(tmp_path)} >= set(ids) and len(pending(tmp_path)) == 5


def test_library_raises_backpressure(tmp_path: Path) -> None:
    """router.emit raises poetctl.Backpressure (exit code 75) when the spool is full; emit_many is all or nothing."""
    import poetctl

    cfg_path = setup(tmp_path, "max_pending = 1")
    router = EventRouter(config=load_config(cfg_path))
    router.emit("system.health", {"service": "s", "status": "healthy"})
    with pytest.raises(poetctl.Backpressure) as info:
        router.emit("system.health", {"service": "s", "status": "healthy"}, wait=0)
    assert info.value.exit_code == 75 and "limit 1" in info.value.message
    with pytest.raises(Backpressure):
        router.emit_many([("system.health", {"service": "s", "status": "healthy"})] * 2, wait=0)
    assert len(pending(tmp_path)) == 1


def test_source_rate_is_shared_across_processes(run_cli: Any, tmp_path: Path) -> None:
    """'external.*' = '1/m': a second emit from that source (another process) exits 75; other sources pass."""
    cfg = setup(tmp_path, '[limits.sources]\n"external.*" = "1/m"')
    assert emit(run_cli, cfg, "--source", "external.pagerduty").returncode == 0
    r = emit(run_cli, cfg, "--source", "external.slack", "--wait", "0")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "source 'external.slack' is over its rate limit ([limits.sources] \"external.*\")" in r.stderr
    assert emit(run_cli, cfg, "--source", "poet.generator").returncode == 0
    assert len(pending(tmp_path)) == 2
    s = run_cli("--config", cfg, "status", "-o", "json")
    assert s.returncode == 0, s.stderr
    lim = json.loads(s.stdout)["limits"]
    assert [t["pattern"] for t in lim["throttled"]] == ["external.*"] and lim["throttled"][0]["refused_total"] == 1


def test_status_shows_fullness(run_cli: Any, tmp_path: Path) -> None:
    """status reports pending against max_pending and bytes against max_pending_bytes (json and table)."""
    cfg = setup(tmp_path, "max_pending = 4\nmax_pending_bytes = 1000000")
    assert emit(run_cli, cfg).returncode == 0
    s = run_cli("--config", cfg, "status", "-o", "json")
    lim = json.loads(s.stdout)["limits"]
    assert lim["pending"] == 1 and lim["max_pending"] == 4 and lim["pending_fill"] == 0.25
    assert lim["max_pending_bytes"] == 1000000 and 0 < lim["pending_bytes"] < 2000
    t = run_cli("--config", cfg, "status", "-o", "table")
    assert "limits: 1 of 4 pending (25%)" in t.stdout


def test_gauge_follows_the_daemon_and_status_writes_nothing(run_cli: Any, tmp_path: Path) -> None:
    """Events removed behind poetctl's back are seen at a daemon's next listing; status only reads the gauge."""
    cfg = setup(tmp_path, "max_pending = 1")
    assert emit(run_cli, cfg).returncode == 0
    pending(tmp_path)[0].rename(tmp_path / "moved.json")  # by hand: the gauge does not know yet
    assert emit(run_cli, cfg, "--wait", "0").returncode == EX_TEMPFAIL
    state = tmp_path / "spool" / "run" / "limits"
    before = state.read_bytes()
    s = run_cli("--config", cfg, "status", "-o", "json")
    assert json.loads(s.stdout)["limits"]["gauge_pending"] == 1 and state.read_bytes() == before
    assert run_cli("--config", cfg, "daemon", "--once", "--no-builtin-handlers").returncode == 0
    assert emit(run_cli, cfg, "--wait", "0").returncode == 0


@pytest.mark.parametrize("text", ["100/s", "600/m", "3600/h", " 5 / sec "])
def test_rates_parse(text: str) -> None:
    """Rates are N/s, N/m or N/h (per second, minute, hour)."""
    assert parse_rate(text) > 0


@pytest.mark.parametrize("text", ["100", "0/s", "-1/s", "1/d", "", "x/s"])
def test_bad_rates_are_config_errors(run_cli: Any, tmp_path: Path, text: str) -> None:
    """A bad rate in [limits.sources] is a config error (78) naming the key, before anything is written."""
    cfg = setup(tmp_path, f'[limits.sources]\n"external.*" = "{text}"')
    r = emit(run_cli, cfg)
    assert r.returncode == 78, r.stderr
    assert "[limits] sources" in r.stderr
    assert pending(tmp_path) == []


def test_serve_answers_429_with_retry_after(tmp_path: Path) -> None:
    """POST /events over max_pending gets 429 with Retry-After, and nothing is written."""
    s = Server(tmp_path, DEFAULT_TABLE + "rate_limit = 1000\nrate_burst = 1000\n", top="[limits]\nmax_pending = 1")
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS['POET_TEST_TOKEN_A']}"}
        body = json.dumps({"type": "system.health", "payload": json.loads(HEALTH)}).encode()
        assert httpx.post(s.url + "/events", content=body, headers=headers).status_code == 200
        r = httpx.post(s.url + "/events", content=body, headers=headers)
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "1" and r.json()["error"] == "backpressure"
        assert "spool full: 1 pending (limit 1)" in r.json()["message"]
    finally:
        s.stop()
    assert len(pending(tmp_path)) == 1
