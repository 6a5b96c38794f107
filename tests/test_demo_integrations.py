"""`make demo-integrations`: the integrations story against local stand-ins, each call printed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import clean_env, cli_argv

ROOT = Path(__file__).resolve().parent.parent


def test_make_target_runs_the_integrations_demo() -> None:
    """The Makefile's demo-integrations target runs poetctl.demo_integrations from the venv."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^demo-integrations:.*\n\t(.+)$", text, re.M)
    assert m and m.group(1) == "$(BIN)/python -m poetctl.demo_integrations"


def test_the_demo_tells_the_story_and_prints_each_call(tmp_path: Path) -> None:
    """Triggers, Slack messages, answers on the page, the PD webhook and the chain: exit 0, each call on a line."""
    argv = cli_argv()
    argv[argv.index("poetctl")] = "poetctl.demo_integrations"
    p = subprocess.run(
        [*argv, str(tmp_path / "demo")], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert len(re.findall(r"POST PagerDuty +/v2/enqueue +202  trigger dedup_key=drift-alert-\d", out)) == 3
    assert len(re.findall(r"POST Slack +/services/\S+ +200 .*buttons: Real drift, False alarm", out)) == 3
    assert len(re.findall(r"POST poetctl serve /poet/feedback/\S+ +200  answer recorded", out)) == 3
    assert re.search(r"POST poetctl serve /webhooks/pagerduty +200  incident.resolved", out)
    assert re.search(r"POST webhook +/hooks/poet +204  CloudEvent feedback.alert_resolved", out)
    tree = out[out.index("poetctl correlate") :]
    for etype in (
        "drift.detected",
        "alert.create_external",
        "alert.created_external",
        "feedback.human_validation",
        "learning.pattern_detected",
        "enhancement.regenerated",
        "feedback.alert_resolved",
    ):
        assert etype in tree, etype
    assert "exit [0, 0]" in out
