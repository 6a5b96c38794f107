"""The shipped operations files (examples/): Prometheus rules (promtool), Grafana dashboard, systemd unit, crontab."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from daemon_helpers.harness import run_cli

from poetctl.observability.backlog import EXPORTED as BACKLOG
from poetctl.observability.metrics import EXPORTED as DAEMON
from poetctl.router import EventRouter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = EXAMPLES / "prometheus" / "poetctl-rules.yml"
RULE_TESTS = EXAMPLES / "prometheus" / "poetctl-rules.test.yml"
DASHBOARD = EXAMPLES / "grafana" / "poetctl-dashboard.json"
UNIT = EXAMPLES / "systemd" / "poetctl-daemon.service"
CRONTAB = EXAMPLES / "cron" / "poetctl.crontab"
# prometheus_client's process collector, and Prometheus's own per-target series.
PROCESS = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"}
KNOWN = DAEMON | BACKLOG | PROCESS | {"up"}
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "and", "or", "time", "deriv", "le",
    "job", "instance", "type", "handler", "reason", "state", "status", "without", "on", "avg", "count",
}  # fmt: skip

promtool = shutil.which("promtool")


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (not functions, labels, or $variables)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\([^()]*\bby\b", "(", expr)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", n)}


def _rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


@pytest.mark.skipif(promtool is None, reason="promtool missing (.ci/run installs Debian's prometheus package)")
def test_promtool_checks_the_rules() -> None:
    """promtool check rules accepts the shipped alerting rules."""
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 8 rules found" in r.stdout


@pytest.mark.skipif(promtool is None, reason="promtool missing (.ci/run installs Debian's prometheus package)")
def test_promtool_unit_tests_of_the_thresholds_pass() -> None:
    """promtool test rules: each alert fires past its threshold and duration, and not before."""
    r = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=300,
        cwd=RULE_TESTS.parent,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_rules_cover_the_seeds_alerts_with_their_severities() -> None:
    """Critical: daemon down, high lag, message loss, disk; warning: growing lag, errors, latency, resources."""
    sev = {r["alert"]: r["labels"]["severity"] for r in _rules()}  # type: ignore[index]
    assert sev == {
        "PoetctlDaemonDown": "critical",
        "PoetctlHighConsumerLag": "critical",
        "PoetctlMessageLoss": "critical",
        "PoetctlDiskNearlyFull": "critical",
        "PoetctlGrowingLag": "warning",
        "PoetctlHandlerErrorRate": "warning",
        "PoetctlHandlerLatencyDegradation": "warning",
        "PoetctlResourcePressure": "warning",
    }
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(sev), "every alert has a promtool unit test"


def test_rules_use_only_exported_metrics() -> None:
    """Every series a rule reads is one poetctl exports (daemon, textfile, process) or Prometheus's up."""
    for r in _rules():
        names = metric_names(str(r["expr"]))
        assert names and names <= KNOWN, (r["alert"], names - KNOWN)


def test_metric_names_helper_finds_unknown_names() -> None:
    """The name extraction sees a misspelt metric (so the two tests above can fail)."""
    assert metric_names('sum by (le) (rate(poetctl_handlr_seconds_bucket{job="x"}[5m]))') == {
        "poetctl_handlr_seconds_bucket"
    }


def test_dashboard_panels_query_exported_metrics() -> None:
    """The Grafana dashboard loads; every panel expression names metrics poetctl exports; the key views exist."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs
    for e in exprs:
        names = metric_names(e)
        assert names and names <= KNOWN, (e, names - KNOWN)
    text = " ".join(exprs)
    for needed in (
        "rate(poetctl_events_handled_total",
        "rate(poetctl_events_emitted_total",
        "poetctl_oldest_pending_age_seconds",
        "histogram_quantile(0.99, sum by (le) (rate(poetctl_emit_to_handle_seconds_bucket",
        "poetctl_events_dead_lettered_total",
        "poetctl_handler_duration_seconds_bucket",
    ):
        assert needed in text, needed
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit without a warning (the binary path swapped for one that exists)."""
    unit = tmp_path / "poetctl-daemon.service"
    text = UNIT.read_text().replace("/usr/local/bin/poetctl", sys.executable)
    unit.write_text(re.sub(r"^(User|Group)=.*$", "", text, flags=re.M))  # the poetctl user need not exist here
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and str(unit) not in r.stderr, r.stderr


def test_systemd_unit_runs_the_daemon_with_options_it_has(tmp_path: Path) -> None:
    """The unit's ExecStart options exist in `poetctl daemon --help`; Type and the health check are as documented."""
    text = UNIT.read_text()
    assert re.search(r"^Type=simple$", text, re.M) and "status --check --min-daemons 1" in text
    (start,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
    argv = shlex.split(start)
    assert argv[1] == "daemon"
    help_text = run_cli(tmp_path, "daemon", "--help").stdout
    for opt in (a for a in argv if a.startswith("--")):
        assert opt in help_text, opt


def test_crontab_commands_run(tmp_path: Path) -> None:
    """Each crontab line's command runs as written against a real spool (paths moved into tmp) and exits 0."""
    sp = tmp_path / "spool"
    EventRouter(spool=sp).emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    (tmp_path / "textfile").mkdir()
    lines = [
        ln
        for ln in CRONTAB.read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]
    ]
    assert len(lines) == 3
    for ln in lines:
        cmd = " ".join(ln.split()[5:]).replace("/var/lib/prometheus/node-exporter", str(tmp_path / "textfile"))
        argv = shlex.split(cmd.split(">")[0])
        assert argv[0] == "poetctl"
        r = run_cli(tmp_path, "--spool", str(sp), *argv[1:])
        assert r.returncode == 0, (ln, r.stderr)
    assert (tmp_path / "textfile" / "poetctl.prom").read_text().count("poetctl_spool_events{") == 5
    assert (sp / "run" / "fsck.json").is_file()
