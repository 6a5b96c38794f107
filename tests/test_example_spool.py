"""The committed spool_example/ stays a consistent, explorable result of the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "spool_example"


def _run(*args: str, spool: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET")}
    return subprocess.run(
        [sys.executable, "-m", "poetctl", "--spool", str(spool), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_spool_is_fsck_clean_and_tells_the_story(tmp_path: Path) -> None:
    """fsck finds nothing, the drift-alert-123 chain is complete and detect_drift is at 1.1.0."""
    spool = tmp_path / "example"
    shutil.copytree(EXAMPLE, spool)
    r = _run("fsck", spool=spool)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run(
        "correlate",
        "drift-alert-123",
        "--expect",
        "drift.detected>alert.create_external>feedback.human_validation>enhancement.regeneration_needed",
        spool=spool,
    )
    assert r.returncode == 0, r.stderr
    r = _run("state", "show", "detect_drift", "--output", "json", spool=spool)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"]["version"] == "1.1.0"
    r = _run("status", "--output", "json", spool=spool)
    counts = json.loads(r.stdout)["counts"]
    assert counts["processed"] == 21 and counts["pending"] == counts["dead"] == counts["corrupt"] == 0
