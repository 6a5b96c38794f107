"""MLflow over its REST API: runs tagged as drift feedback come in, drift events tag runs going out.

Inbound (``poetctl mlflow sync``, from cron): search the tracking server
(``POST /api/2.0/mlflow/runs/search``) for runs tagged ``poet_execution_id``;
a run that also has ``drift_false_positive`` or ``drift_confirmed`` becomes one
``feedback.mlflow_validation`` as the seed's ``handle_mlflow_feedback`` maps it
(false positive wins when both are set; confidence 0.8 by default; source
``external.mlflow``). The event id is derived from the run and the verdict
(``mlflow-<run id>-<verdict>``), so a run seen again is deduplicated by the
spool: no state file, nothing lost when a sync dies half-way. A run whose
verdict changes yields one more event (the new verdict). The run's
``poet_correlation_id`` tag, when present, becomes the event's correlation id.

Outbound: ``drift.detected`` and ``feedback.model_retrained`` carrying
``mlflow_run_id`` tag that run with ``poet_execution_id`` and
``poet_correlation_id`` (the alert's correlation id) via
``POST /api/2.0/mlflow/runs/set-tag`` (idempotent, so retries are harmless).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..daemon.outcomes import Permanent, Retry
from ..errors import BackendUnavailable, InvalidData
from ..event import Event
from ..router import EventRouter
from .http import Outbound, Transient
from .settings import Integration

SOURCE = "external.mlflow"
SEARCH = "/api/2.0/mlflow/runs/search"
EXPERIMENTS = "/api/2.0/mlflow/experiments/search"
SET_TAG = "/api/2.0/mlflow/runs/set-tag"
RUN_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
MAX_PAGES = 10_000  # a server that keeps returning page tokens cannot keep a sync running forever


def alert_correlation_id(event: Event) -> str:
    """The correlation id the alert for drift ``event`` gets (see MLMonitoringEventHandlers.handle_drift_detected)."""
    from ..handlers.ml_monitoring import alert_correlation_id as rule

    return rule(event)


def verdict(tags: dict[str, str]) -> str | None:
    """The seed's mapping: drift_false_positive -> false_positive, else drift_confirmed -> confirmed_drift."""
    if "poet_execution_id" not in tags:
        return None
    if "drift_false_positive" in tags:
        return "false_positive"
    if "drift_confirmed" in tags:
        return "confirmed_drift"
    return None


@dataclass(slots=True)
class SyncResult:
    runs: int = 0
    emitted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class MLflowIntegration:
    """The MLflow integration ``it``: ``register`` subscribes the run tagger, ``sync`` polls feedback."""

    def __init__(self, router: EventRouter, it: Integration, outbound: Outbound) -> None:
        self.router = router
        self.it = it
        self.outbound = outbound
        self.base = it.url("tracking_uri").rstrip("/")
        token = it.secret("token") if it.get("token") is not None else None
        self.headers = {"content-type": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"

    def _post(self, path: str, body: dict[str, Any], *, use_breaker: bool = True) -> Any:
        answer = self.outbound.request(
            "POST", self.base + path, body=orjson.dumps(body), headers=self.headers, use_breaker=use_breaker
        )
        return answer.json()

    # -- outbound: tag the run -------------------------------------------------------------
    def register(self) -> None:
        if not self.it.get("tag_runs"):
            return
        n = self.it.name
        self.router.subscribe("drift.detected", self.tag_run, name=f"poet.mlflow.{n}.drift")
        self.router.subscribe("feedback.model_retrained", self.tag_run, name=f"poet.mlflow.{n}.retrained")

    def tag_run(self, event: Event) -> None:
        """Tag the run named by ``mlflow_run_id`` with the execution and the alert's correlation id."""
        run_id = event.payload.get("mlflow_run_id")
        if not isinstance(run_id, str):
            return
        correlation = alert_correlation_id(event) if event.type == "drift.detected" else event.correlation_id
        tags = {"poet_execution_id": event.payload.get("execution_id"), "poet_correlation_id": correlation}
        for key, value in tags.items():
            if isinstance(value, str) and value:
                self._post(SET_TAG, {"run_id": run_id, "key": key, "value": value})

    # -- inbound: runs tagged as feedback --------------------------------------------------
    def experiment_ids(self) -> list[str]:
        configured = [str(x) for x in self.it.get("experiment_ids") or []]
        if configured:
            return configured
        ids: list[str] = []
        token = None
        for _ in range(MAX_PAGES):
            body: dict[str, Any] = {"max_results": 1000}
            if token:
                body["page_token"] = token
            doc = self._post(EXPERIMENTS, body) or {}
            ids += [str(e["experiment_id"]) for e in doc.get("experiments", []) if "experiment_id" in e]
            token = doc.get("next_page_token")
            if not token:
                break
        return ids

    def runs(self) -> Iterator[dict[str, Any]]:
        """Every run tagged poet_execution_id in the experiments (all pages)."""
        ids = self.experiment_ids()
        if not ids:
            return
        token = None
        for _ in range(MAX_PAGES):
            body: dict[str, Any] = {
                "experiment_ids": ids,
                "filter": "tags.poet_execution_id LIKE '%'",
                "max_results": int(self.it.get("max_results")),
            }
            if token:
                body["page_token"] = token
            doc = self._post(SEARCH, body) or {}
            yield from doc.get("runs", [])
            token = doc.get("next_page_token")
            if not token:
                return

    def sync(self) -> SyncResult:
        """Emit one feedback.mlflow_validation per tagged run not yet in the spool.

        Raises :class:`BackendUnavailable` (69) when the server cannot be
        reached or keeps failing; what was emitted before stays (ids dedupe).
        """
        res = SyncResult()
        try:
            for run in self.runs():
                res.runs += 1
                self._one(run, res)
        except (Transient, Retry, Permanent) as exc:
            raise BackendUnavailable(f"mlflow sync: {exc}") from None
        return res

    def _one(self, run: dict[str, Any], res: SyncResult) -> None:
        info = run.get("info") or {}
        run_id = info.get("run_id") or info.get("run_uuid")
        tags = {
            str(t.get("key")): str(t.get("value"))
            for t in (run.get("data") or {}).get("tags", [])
            if isinstance(t, dict)
        }
        kind = verdict(tags)
        if kind is None or not isinstance(run_id, str):
            return
        if not RUN_ID_RE.match(run_id):
            res.skipped.append(f"run id {run_id[:80]!r} is not an MLflow run id")
            return
        payload = {
            "execution_id": tags["poet_execution_id"],
            "validation_type": kind,
            "experiment_id": str(info.get("experiment_id", "")),
            "confidence": float(self.it.get("confidence")),
        }
        correlation = tags.get("poet_correlation_id") or None
        try:
            eid = self.router.emit(
                "feedback.mlflow_validation",
                payload,
                source=SOURCE,
                correlation_id=correlation,
                id=f"mlflow-{run_id}-{kind}",
            )
        except InvalidData as exc:
            res.skipped.append(f"run {run_id}: {exc}")
            return
        res.emitted.append(eid)

    def check(self) -> str:
        """`integrations check`: list one experiment."""
        self._post(EXPERIMENTS, {"max_results": 1}, use_breaker=False)
        return "tracking server answered"


def report(res: SyncResult) -> None:
    for line in res.skipped:
        sys.stderr.write(f"poetctl: mlflow sync: skipped {line}\n")
