"""The seed's code runs as written, bar the import (issue 16): names, constructor, snippets, correlation API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli

import poetctl
from poetctl.errors import BackendUnavailable, UsageError

IMPORT = (
    "from poetctl import POETEventRouter, EventDeliveryMode, MLMonitoringEventHandlers, LearningEngine, "
    "FunctionStateHandlers\n"
)

# The seed's "Integration with POET Main System" snippet, verbatim (its import line aside).
SEED_CODE_GENERATOR = """
# In POETCodeGenerator
class POETCodeGenerator:
    def __init__(self, event_router: POETEventRouter):
        self.event_router = event_router
        self.ml_handlers = MLMonitoringEventHandlers(event_router, learning_engine)

    def enhance_function(self, original_func, config):
        # Generate enhanced code with event emission
        enhanced_code = self._generate_with_events(original_func, config)

        # Emit enhancement completion event
        self.event_router.emit(
            "enhancement.completed",
            {
                "function_name": original_func.__name__,
                "domain": config.domain,
                "enhancement_version": "v1",
                "generated_features": self._extract_features(enhanced_code)
            }
        )

        return enhanced_code
"""

# What the seed leaves to its reader: the router, the learning engine, the generator's two helpers.
USER_CODE = """
router = POETEventRouter(storage_path=STORAGE, delivery_mode=EventDeliveryMode.HYBRID)
learning_engine = LearningEngine(router)

class Generator(POETCodeGenerator):
    def _generate_with_events(self, original_func, config):
        return "def detect_drift_enhanced(): ..."

    def _extract_features(self, enhanced_code):
        return ["drift_events"]

class Config:
    domain = "ml_monitoring"

def detect_drift(current_data, reference_data):
    return 0.0
"""

# The seed's "Basic Event Emission in Enhanced Functions" snippet (poet_events.emit(...)).
SEED_DRIFT = """
def detect_drift_enhanced(current_data, reference_data):
    execution_id = "exec-42"
    result = {"score": 0.93, "method": "ks_test", "p_value": 0.001}
    poet_events.emit(
        "drift.detected",
        {
            "execution_id": execution_id,
            "function_name": "detect_drift",
            "model_name": "customer_churn_model",
            "feature_name": "user_activity_score",
            "drift_score": result["score"],
            "method": result["method"],
            "statistical_significance": result["p_value"],
            "data_characteristics": {
                "sample_size": len(current_data),
                "data_type": "continuous",
                "missing_values_percent": 0.0
            }
        }
    )
    return result
"""


def run_seed(tmp_path: Path, *parts: str, **names: Any) -> dict[str, Any]:
    ns: dict[str, Any] = {"STORAGE": str(tmp_path / ".poet" / "events"), **names}
    exec(compile(IMPORT + "".join(parts), str(tmp_path / "seed_snippet.py"), "exec"), ns)
    return ns


def correlate(run_cli: RunCli, spool: Path, ident: str, *extra: str) -> Any:
    r = run_cli("correlate", ident, "--spool", spool, *extra)
    return r


def test_the_seeds_names_import_from_poetctl_and_import_stays_cheap() -> None:
    """The seed's names come from poetctl; `import poetctl` loads none of them."""
    code = "import sys, poetctl; print(sorted(m for m in sys.modules if m.startswith('poetctl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['poetctl']"
    assert [m.name for m in poetctl.EventDeliveryMode] == ["LOCAL_ONLY", "AITOMATIC_ONLY", "HYBRID"]
    assert poetctl.EventDeliveryMode.HYBRID.value == "hybrid"  # the seed's values
    assert issubclass(poetctl.POETEventRouter, poetctl.EventRouter)
    for name in ("MLMonitoringEventHandlers", "LearningEngine", "FunctionStateHandlers", "CorrelationTracker"):
        assert isinstance(getattr(poetctl, name), type)


def test_code_generator_snippet_emits_enhancement_completed_and_registers_the_ml_handlers(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """The seed's POETCodeGenerator runs as written: building it subscribes the ML handlers; enhance_function emits."""
    ns = run_seed(tmp_path, SEED_CODE_GENERATOR, USER_CODE)
    router = ns["router"]
    gen = ns["Generator"](router)
    assert {s.pattern for s in router.subscriptions} >= {
        "drift.detected",
        "feedback.human_validation",
        "feedback.model_retrained",
        "monitoring.performance_degraded",
    }
    assert gen.enhance_function(ns["detect_drift"], ns["Config"]()) == "def detect_drift_enhanced(): ..."
    spool = tmp_path / ".poet" / "events"
    (found,) = [json.loads(p.read_text()) for p in (spool / "events" / "pending").glob("*.json")]
    assert found["type"] == "enhancement.completed"
    assert found["payload"] == {
        "function_name": "detect_drift",
        "domain": "ml_monitoring",
        "enhancement_version": "v1",
        "generated_features": ["drift_events"],
    }
    r = correlate(run_cli, spool, found["id"], "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [n["type"] for n in json.loads(r.stdout)] == ["enhancement.completed"]
    router.close()


@pytest.mark.parametrize("dispatch", ["queue", "inline"])
def test_drift_to_alert_chain_runs_in_process(tmp_path: Path, run_cli: RunCli, dispatch: str) -> None:
    """The seed's drift emission reaches the ML handlers in process (run_until_idle, or inline by default)."""
    ns = run_seed(tmp_path, SEED_CODE_GENERATOR, USER_CODE)
    router = ns["router"]
    if dispatch == "queue":
        router.dispatch = "queue"
    ns["Generator"](router)
    ns["poet_events"] = router
    exec(compile(SEED_DRIFT, "seed_drift.py", "exec"), ns)
    ns["detect_drift_enhanced"]([1.0] * 100, [0.0] * 100)
    if dispatch == "queue":
        assert router.run_until_idle(timeout=120) >= 1
    spool = tmp_path / ".poet" / "events"
    docs = [json.loads(p.read_text()) for p in (spool / "events").glob("*/*.json")]
    (drift,) = [d for d in docs if d["type"] == "drift.detected"]
    (alert,) = [d for d in docs if d["type"] == "alert.create_external"]
    assert router.transport.state_of(drift["id"]) == "processed"
    assert alert["causation_id"] == drift["id"]
    assert alert["payload"]["severity"] == "critical" and alert["payload"]["feedback_url"].endswith(drift["id"])
    assert router.correlation_tracker.get_events(alert["correlation_id"]) == [alert["id"]]
    assert router.get_correlated_events(alert["correlation_id"]) == [alert["id"]]
    router.correlation_tracker.track(alert["correlation_id"], drift["id"])  # accepted, changes nothing
    r = correlate(run_cli, spool, drift["id"], "--expect", "drift.detected>alert.create_external")
    assert r.returncode == 0, r.stdout + r.stderr
    learning = json.loads((spool / "state" / "learning.json").read_text())
    assert "exec-42" in json.dumps(learning)  # record_drift_detection reached the learning engine
    router.close()


def test_function_state_handlers_from_poetctl_keep_versions(tmp_path: Path) -> None:
    """FunctionStateHandlers(router), built as the seed would, subscribes and records a function.update inline."""
    ns = run_seed(
        tmp_path, "router = POETEventRouter(storage_path=STORAGE, delivery_mode=EventDeliveryMode.LOCAL_ONLY)\n"
    )
    router = ns["router"]
    ns["FunctionStateHandlers"](router)
    payload = {"function_name": "detect_drift", "old_version": "v1", "new_version": "v2", "reason": "r", "changes": []}
    router.emit("function.update", payload)
    assert router.stores.state.current("detect_drift")["version"] == "v2"
    router.close()


def test_delivery_modes_and_the_seeds_constructor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCAL_ONLY/HYBRID: the spool at storage_path, inline; AITOMATIC_ONLY without NATS says what is missing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POET_NATS_URL", raising=False)
    r = poetctl.POETEventRouter()
    assert r.storage_path == Path(".poet/events") and r.delivery_mode is poetctl.EventDeliveryMode.HYBRID
    assert r.dispatch == "inline" and Path(r.config.spool).resolve() == (tmp_path / ".poet/events").resolve()
    r.start(workers=1)  # HYBRID without [nats]: the local consumer only, as the seed without a bus
    assert r.close() == []
    assert poetctl.POETEventRouter("s2", "local_only", dispatch="queue").dispatch == "queue"
    with pytest.raises(UsageError, match="aitomatic_event_bus"):
        poetctl.POETEventRouter("s3", poetctl.EventDeliveryMode.LOCAL_ONLY, object())
    with pytest.raises(UsageError, match="delivery_mode 'sometimes'"):
        poetctl.POETEventRouter("s4", "sometimes")

    import importlib

    real = importlib.import_module

    def no_nats(name: str, package: str | None = None) -> Any:
        if name.startswith("poetctl.backends.nats"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_nats)
    with pytest.raises(BackendUnavailable, match=r"AITOMATIC_ONLY .*poetctl\.backends\.nats.*LOCAL_ONLY") as exc:
        poetctl.POETEventRouter("s5", poetctl.EventDeliveryMode.AITOMATIC_ONLY)
    assert exc.value.exit_code == 69
    assert not (tmp_path / "s5").exists()


SCRIPT_TAIL = """
gen = Generator(router)
gen.enhance_function(detect_drift, Config())
poet_events = router
detect_drift_enhanced([1.0] * 10, [0.0] * 10)
# enhancement.completed has no local subscriber: it waits for a consumer, and the drift of the
# same function (same partition key) waits behind it; run_until_idle handles both, in order.
router.run_until_idle(timeout=60)
print(sorted(s.event.type for s in router.transport.select(Query())))
router.close()
"""


def test_the_seed_snippets_in_notes_run_as_a_script(tmp_path: Path) -> None:
    """The README's "From the seed's code" example, as a script in a fresh process, prints the chain."""
    script = tmp_path / "seed_example.py"
    user = USER_CODE.replace("STORAGE", '".poet/events"')
    head = IMPORT + "from poetctl.transport import Query\n"
    script.write_text(head + SEED_CODE_GENERATOR + user + SEED_DRIFT + SCRIPT_TAIL)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['alert.create_external', 'drift.detected', 'enhancement.completed']"


def test_correlation_tracker_answers_nothing_for_no_correlation_id() -> None:
    """get_events(None) or '' is [] (a Query without a correlation id would match every event)."""
    from poetctl.seedapi import CorrelationTracker
    from poetctl.testing import Harness

    h = Harness()
    eid = h.router.emit("system.health", {"service": "s", "status": "healthy"}, correlation_id="c-1")
    tracker = CorrelationTracker(h.router)
    assert tracker.get_events("c-1") == [eid]
    assert tracker.get_events(None) == [] and tracker.get_events("") == []  # type: ignore[arg-type]
