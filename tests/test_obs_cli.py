"""CLI pieces of observability: ``status --prometheus FILE`` (node-exporter textfile)."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers.harness import events_dir, run_cli

from poetctl.router import EventRouter

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_status_prometheus_writes_a_parsable_textfile(tmp_path: Path) -> None:
    """status --prometheus FILE: counts, lag, dead and corrupt in text format; nothing on stdout; no tmp left."""
    sp = tmp_path / "spool"
    r = EventRouter(spool=sp)
    for _ in range(4):
        r.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    (events_dir(sp, "corrupt") / "0190a5b4-0000-7000-8000-000000000009.json").write_text("{bad")
    (events_dir(sp, "corrupt") / "0190a5b4-0000-7000-8000-000000000009.json.reason").write_text(
        '{"reason": "bad_json", "detail": "x"}'
    )
    out_dir = tmp_path / "textfiles"
    out_dir.mkdir()
    target = out_dir / "poetctl.prom"
    res = run_cli(tmp_path, "--spool", str(sp), "status", "--prometheus", str(target))
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert [p.name for p in out_dir.iterdir()] == ["poetctl.prom"]
    v = _values(target.read_text())
    assert v[("poetctl_spool_events", (("state", "pending"),))] == 4
    assert v[("poetctl_spool_events", (("state", "dead"),))] == 0
    assert ("poetctl_spool_events", (("state", "corrupt"),)) in v
    assert v[("poetctl_oldest_pending_age_seconds", ())] >= 0
    assert v[("poetctl_daemons", (("status", "alive"),))] == 0
    assert v[("poetctl_filesystem_avail_bytes", ())] > 0


def test_status_prometheus_replaces_the_file_and_keeps_json_output(tmp_path: Path) -> None:
    """A second run replaces the textfile atomically; with -o json the document is printed too."""
    sp = tmp_path / "spool"
    r = EventRouter(spool=sp)
    r.layout.init()
    target = tmp_path / "poetctl.prom"
    assert run_cli(tmp_path, "--spool", str(sp), "status", "--prometheus", str(target)).returncode == 0
    assert _values(target.read_text())[("poetctl_spool_events", (("state", "pending"),))] == 0
    r.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    res = run_cli(tmp_path, "--spool", str(sp), "status", "--prometheus", str(target), "-o", "json")
    assert res.returncode == 0, res.stderr
    assert '"pending": 1' in res.stdout or '"pending":1' in res.stdout
    assert _values(target.read_text())[("poetctl_spool_events", (("state", "pending"),))] == 1


def test_status_prometheus_into_a_missing_directory_is_one_error(tmp_path: Path) -> None:
    """A target directory that does not exist: one-line error, exit 74, no traceback."""
    sp = tmp_path / "spool"
    EventRouter(spool=sp).emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    res = run_cli(tmp_path, "--spool", str(sp), "status", "--prometheus", str(tmp_path / "nope" / "x.prom"))
    assert res.returncode == 74 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--prometheus" in res.stderr


@pytest.mark.parametrize(
    "args",
    [["emit", "system.metrics", '{"service": "s", "metrics": {"n": 1}}'], ["status", "-o", "json"]],
    ids=["emit", "status"],
)
def test_emit_and_status_do_not_import_observability(tmp_path: Path, args: list[str]) -> None:
    """Start-up stays as it was: emit and plain status import neither prometheus_client nor the log formatter."""
    import subprocess
    import sys

    from conftest import clean_env

    sp = tmp_path / "spool"
    EventRouter(spool=sp).layout.init()
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "poetctl", "--spool", str(sp), *args],
        capture_output=True,
        text=True,
        env=clean_env({"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}),
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "poetctl.cli" in imported  # the check sees poetctl's own imports
    for mod in ("prometheus_client", "poetctl.observability", "poetctl.observability.logs", "structlog", "rich.live"):
        assert mod not in imported, mod
