"""``poetctl state rebuild``: state/ and feedback/ reconstructed from the event history alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_env, cli_argv

from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.fs.storage import FsStorage
from poetctl.ops.rebuild import snapshot


@pytest.fixture(scope="module")
def demo_spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool after ``python -m poetctl.demo`` (run once for the module)."""
    root = tmp_path_factory.mktemp("demo") / "spool"
    r = subprocess.run(
        _demo_argv(root),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return root


def _demo_argv(root: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "poetctl.demo", str(root), "--keep"]


@pytest.fixture
def spool(demo_spool: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the demo's spool."""
    dst = tmp_path / "spool"
    shutil.copytree(demo_spool, dst, symlinks=True)
    yield dst


def rebuild(run_cli: Any, spool: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    r = run_cli("--spool", spool, "state", "rebuild", "-o", "json", *extra)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def test_rebuild_after_the_demo_equals_the_live_state(run_cli: Any, spool: Path) -> None:
    """After the demo, the state rebuilt from the events is the live state, and the live state is not empty."""
    live = snapshot(FsStorage(SpoolLayout(spool)))
    assert live["state"]["detect_drift"]["current"]["version"] == "1.1.0"
    assert len(live["state"]["detect_drift"]["history"]) >= 1
    assert live["learning"]["detections"] and live["feedback"]["processed"]
    rc, doc, err = rebuild(run_cli, spool)
    assert rc == 0, err
    assert doc["differences"] == 0 and doc["diff"] == [] and doc["events"] > 10 and doc["failed"] == 0
    assert not any(p.name.startswith("rebuild.") for p in (spool / "run").iterdir())  # nothing left in the spool


def test_differences_are_listed_and_nothing_is_changed(run_cli: Any, spool: Path) -> None:
    """A damaged live state: rebuild exits 1 naming each difference, and leaves the live files as they were."""
    cur = spool / "state" / "detect_drift" / "current.json"
    doc = json.loads(cur.read_text())
    doc["version"] = "9.9.9"
    cur.write_text(json.dumps(doc))
    gone = sorted((spool / "feedback" / "processed").iterdir())[0]
    gone.unlink()
    before = cur.read_bytes()
    rc, out, err = rebuild(run_cli, spool)
    assert rc == 1, err
    assert '~ state/detect_drift/current/version: "9.9.9" -> "1.1.0"' in out["diff"]
    assert any(line.startswith(f"+ feedback/processed/{gone.name[:-5]}: ") for line in out["diff"])
    assert cur.read_bytes() == before and not gone.exists()


def test_apply_replaces_the_state_and_keeps_the_old(run_cli: Any, spool: Path) -> None:
    """--apply puts the rebuilt state in place (a second rebuild finds nothing) and keeps the old one in run/."""
    (spool / "state" / "detect_drift" / "current.json").write_text('{"version": "0.0.1"}')
    (spool / "state" / "learning.json").write_text("{not json")
    rc, out, err = rebuild(run_cli, spool, "--apply")
    assert rc == 0, err
    assert out["applied"] and out["differences"] > 0
    kept = Path(out["old_state"])
    assert kept.parent == spool / "run" and (kept / "state" / "learning.json").read_text() == "{not json"
    rc, again, err = rebuild(run_cli, spool)
    assert rc == 0 and again["differences"] == 0, again["diff"]
    show = run_cli("--spool", spool, "state", "show", "detect_drift", "-o", "json")
    assert json.loads(show.stdout)["current"]["version"] == "1.1.0"


def test_apply_refuses_while_a_daemon_runs(run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """--apply with a live daemon on the spool exits 75 and changes nothing."""
    daemon = subprocess.Popen(
        cli_argv("--spool", spool, "daemon"), env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        beats = spool / "run" / "daemons"
        deadline = time.monotonic() + 60
        while not (beats.is_dir() and any(beats.iterdir())):
            assert daemon.poll() is None and time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.05)
        before = (spool / "state" / "detect_drift" / "current.json").read_bytes()
        r = run_cli("--spool", spool, "state", "rebuild", "--apply")
        assert r.returncode == 75, r.stderr
        assert "a daemon is running" in r.stderr
        assert (spool / "state" / "detect_drift" / "current.json").read_bytes() == before
    finally:
        daemon.terminate()
        daemon.wait(60)
