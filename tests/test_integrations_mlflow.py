"""MLflow against a real `mlflow server`: tagged runs become feedback once; drift events tag runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakeapis import refused_url

from poetctl import EventRouter
from poetctl.backends.fs.layout import SpoolLayout

MLFLOW = Path(sys.executable).parent / "mlflow"
pytestmark = pytest.mark.skipif(not MLFLOW.exists(), reason="mlflow is not installed in this environment")


def free_port() -> int:
    return int(refused_url().rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real tracking server (sqlite store) for this module; killed at the end."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{d}/mlflow.db",
            "--default-artifact-root",
            str(d / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "server.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # poll the observable readiness, not a fixed sleep
            assert proc.poll() is None, (d / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def api(url: str, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(url + "/api/2.0/mlflow/" + path, json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def experiment(url: str, name: str) -> str:
    return str(api(url, "experiments/create", {"name": name})["experiment_id"])


def run(url: str, exp: str, **tags: str) -> str:
    doc = api(url, "runs/create", {"experiment_id": exp, "start_time": int(time.time() * 1000)})
    rid = str(doc["run"]["info"]["run_id"])
    for k, v in tags.items():
        api(url, "runs/set-tag", {"run_id": rid, "key": k, "value": v})
    return rid


def tags_of(url: str, rid: str) -> dict[str, str]:
    r = httpx.get(url + "/api/2.0/mlflow/runs/get", params={"run_id": rid}, timeout=10)
    return {t["key"]: t["value"] for t in r.json()["run"]["data"].get("tags", [])}


def setup(tmp_path: Path, url: str, exp: str) -> Path:
    SpoolLayout(tmp_path / "spool").init()
    (tmp_path / "poet.toml").write_text(
        f'storage_path = "spool"\n[integrations.mlflow]\nenabled = true\ntracking_uri = "{url}"\n'
        f'experiment_ids = ["{exp}"]\n'
    )
    return tmp_path / "poet.toml"


def feedback_events(spool: Path) -> list[dict[str, Any]]:
    out = []
    for state in ("pending", "processed"):
        for p in sorted((spool / "events" / state).glob("*.json")):
            ev = json.loads(p.read_text())
            if ev["type"] == "feedback.mlflow_validation":
                out.append(ev)
    return out


def test_tagged_runs_become_feedback_once(run_cli: Any, tmp_path: Path, tracking: str) -> None:
    """Each run tagged poet_execution_id + a verdict gives one event as the seed maps it; a second sync adds none."""
    exp = experiment(tracking, "drift-once")
    fp = run(tracking, exp, poet_execution_id="exec-fp", drift_false_positive="true")
    ok = run(tracking, exp, poet_execution_id="exec-ok", drift_confirmed="true", poet_correlation_id="drift-alert-5")
    both = run(tracking, exp, poet_execution_id="exec-both", drift_confirmed="1", drift_false_positive="1")
    run(tracking, exp, poet_execution_id="exec-none")  # no verdict yet
    run(tracking, exp, drift_confirmed="true")  # not a POET run
    cfg = setup(tmp_path, tracking, exp)
    r = run_cli("mlflow", "sync", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    events = {e["id"]: e for e in feedback_events(tmp_path / "spool")}
    assert sorted(r.stdout.split()) == sorted(events)
    assert set(events) == {
        f"mlflow-{fp}-false_positive",
        f"mlflow-{ok}-confirmed_drift",
        f"mlflow-{both}-false_positive",
    }
    e = events[f"mlflow-{ok}-confirmed_drift"]
    assert e["payload"] == {
        "execution_id": "exec-ok",
        "validation_type": "confirmed_drift",
        "experiment_id": exp,
        "confidence": 0.8,
    }
    assert e["source"] == "external.mlflow" and e["correlation_id"] == "drift-alert-5"
    assert events[f"mlflow-{fp}-false_positive"]["payload"]["validation_type"] == "false_positive"
    # Seen again (and a verdict tag set a second time to the same run): nothing new.
    api(tracking, "runs/set-tag", {"run_id": fp, "key": "drift_false_positive", "value": "yes"})
    r = run_cli("mlflow", "sync", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(feedback_events(tmp_path / "spool")) == 3
    # A run tagged later is picked up by the next sync.
    api(
        tracking,
        "runs/set-tag",
        {"run_id": run(tracking, exp, poet_execution_id="late"), "key": "drift_confirmed", "value": "t"},
    )
    r = run_cli("mlflow", "sync", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 0 and len(feedback_events(tmp_path / "spool")) == 4


def test_a_daemon_handles_the_synced_feedback(run_cli: Any, tmp_path: Path, tracking: str) -> None:
    """The synced events are valid input for the built-in mlflow_validation handler (processed, not dead)."""
    exp = experiment(tracking, "drift-handled")
    run(tracking, exp, poet_execution_id="exec-h", drift_false_positive="true")
    cfg = setup(tmp_path, tracking, exp)
    (tmp_path / "poet.toml").write_text(cfg.read_text().replace("tracking_uri", "tag_runs = false\ntracking_uri"))
    assert run_cli("mlflow", "sync", "--config", cfg, cwd=tmp_path).returncode == 0
    r = run_cli("daemon", "--once", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "spool" / "events" / "processed").glob("mlflow-*.json"))) == 1


def test_server_down_exits_69_and_emits_nothing(run_cli: Any, tmp_path: Path) -> None:
    """No tracking server: one line, exit 69 (run again later), no event written."""
    cfg = setup(tmp_path, refused_url(), "1")
    r = run_cli("mlflow", "sync", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 69, r.stderr
    assert "cannot reach" in r.stderr and r.stderr.count("\n") == 1
    assert feedback_events(tmp_path / "spool") == []


def test_drift_events_tag_their_run(run_cli: Any, tmp_path: Path, tracking: str, samples: Any) -> None:
    """drift.detected / feedback.model_retrained with mlflow_run_id tag the run with execution and correlation ids."""
    exp = experiment(tracking, "drift-tagging")
    rid, rid2 = run(tracking, exp), run(tracking, exp)
    cfg = setup(tmp_path, tracking, exp)
    router = EventRouter(spool=tmp_path / "spool")
    drift = {**samples["drift.detected"]["valid"][0], "mlflow_run_id": rid}
    did = router.emit("drift.detected", drift)
    retrained = {**samples["feedback.model_retrained"]["valid"][0], "mlflow_run_id": rid2}
    router.emit("feedback.model_retrained", retrained, correlation_id="drift-alert-77")
    r = run_cli("daemon", "--once", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    alert = next(
        json.loads(p.read_text())
        for p in (tmp_path / "spool" / "events" / "processed").glob("*.json")
        if json.loads(p.read_text())["type"] == "alert.create_external"
    )
    assert alert["causation_id"] == did
    t = tags_of(tracking, rid)
    assert t["poet_execution_id"] == drift["execution_id"]
    assert t["poet_correlation_id"] == alert["correlation_id"]  # the alert's, derived by the seed's rule
    t2 = tags_of(tracking, rid2)
    assert t2["poet_execution_id"] == retrained["execution_id"] and t2["poet_correlation_id"] == "drift-alert-77"
    # Closing the loop: a person tags the run; the sync reports it in the alert's correlation.
    api(tracking, "runs/set-tag", {"run_id": rid, "key": "drift_false_positive", "value": "true"})
    assert run_cli("mlflow", "sync", "--config", cfg, cwd=tmp_path).returncode == 0
    (fb,) = feedback_events(tmp_path / "spool")
    assert fb["correlation_id"] == alert["correlation_id"]
