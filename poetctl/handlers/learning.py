"""The learning engine (the seed's ``POETLearningEngine``).

It keeps, per function and model, the drift detections it has seen and the
feedback about them, and finds the seed's three patterns:

``threshold_too_sensitive``
    Within ``window_days``, at least ``min_samples`` validated detections and
    a false-positive rate above ``fp_rate_threshold``.
``false_positive_seasonal``
    At least ``min_samples`` false positives within the window, of which a
    share of at least ``seasonal_concentration`` falls in one hour of the day
    (UTC) or in one day of the week.
``missing_edge_case``
    At least ``min_edge_cases`` detections confirmed as real drift whose
    ``drift_score`` was at most ``low_score_threshold`` (severity low or
    medium: the function scored real drift too low).

:meth:`LearningEngine.should_regenerate` is true when a pattern holds for the
function and has not been reported for the function's current version yet;
reporting it (``mark_reported``) makes the engine quiet until new evidence
for a *different* pattern, or a new function version, arrives.

State lives in a :class:`~poetctl.storage.LearningState` (the spool's
``state/learning.json``, or memory in tests) and is written atomically under a
lock (threads and processes), keyed by event and execution ids, so feeding
the same events twice yields the same state. A damaged ``learning.json``
(not a JSON object with object sections, nested too deep, a duplicate key...)
is refused with :class:`~poetctl.errors.InvalidData`, so the handler fails and
its event is retried, then dead-lettered, and the file is never replaced:
rewriting it would lose whatever an operator can still recover from it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..storage import LEARNING_FILE, LEARNING_SECTIONS, MAX_LEARNING_BYTES, LearningState, parse_learning

if TYPE_CHECKING:
    from ..backends.fs.layout import SpoolLayout
    from ..router import EventRouter

# The old names (``poetctl fsck`` and callers of earlier versions import them from here).
STATE_FILE = LEARNING_FILE
SECTIONS = LEARNING_SECTIONS
MAX_STATE_BYTES = MAX_LEARNING_BYTES


@dataclass(slots=True)
class LearningSettings:
    """Thresholds; each is a key of poet.toml's ``[learning]`` table."""

    window_days: float = 30.0
    min_samples: int = 5
    fp_rate_threshold: float = 0.5
    seasonal_concentration: float = 0.6
    low_score_threshold: float = 0.5
    min_edge_cases: int = 2
    max_detections_per_function: int = 5000

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> LearningSettings:
        s = cls()
        for k, v in table.items():
            if k not in cls.__dataclass_fields__:
                raise ValueError(f"unknown [learning] key {k!r}; expected one of {sorted(cls.__dataclass_fields__)}")
            setattr(s, k, type(getattr(s, k))(v))
        return s


@dataclass(slots=True)
class Pattern:
    """A detected pattern with the seed's evidence fields."""

    pattern_type: str
    function_name: str
    confidence: float
    sample_size: int
    correlation_strength: float
    business_impact: str
    recommended_action: str
    detail: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The ``learning.pattern_detected`` payload."""
        return {
            "pattern_type": self.pattern_type,
            "affected_functions": [self.function_name],
            "confidence": round(self.confidence, 4),
            "evidence": {
                "sample_size": self.sample_size,
                "correlation_strength": round(self.correlation_strength, 4),
                "business_impact": self.business_impact,
            },
            "recommended_action": self.recommended_action,
        }


def _impact(rate: float) -> str:
    return "high" if rate >= 0.8 else "medium" if rate >= 0.6 else "low"


class LearningEngine:
    """Records detections and feedback; detects patterns. Safe across threads and processes."""

    def __init__(
        self, store: LearningState | SpoolLayout | EventRouter, settings: LearningSettings | None = None
    ) -> None:
        """``store``: where the state lives (:attr:`EventRouter.stores.learning <poetctl.router.EventRouter.stores>`);
        a router (the seed's ``POETLearningEngine(event_router)``) means its ``stores.learning``, with
        ``settings`` from its poet.toml ``[learning]`` table; a
        :class:`~poetctl.backends.fs.layout.SpoolLayout` means that spool's ``state/learning.json``."""
        from ..backends.fs.layout import SpoolLayout

        if not isinstance(store, (LearningState, SpoolLayout)):  # a router
            if settings is None:
                settings = LearningSettings.from_config(dict(store.config.learning))
            store = store.stores.learning
        if isinstance(store, SpoolLayout):
            from ..backends.fs.storage import FsLearningState

            store = FsLearningState(store)
        self.store: LearningState = store
        self.settings = settings or LearningSettings()

    # -- storage ---------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        """The stored state (a damaged one raises InvalidData, 65, and is left as it is)."""
        return self.store.load()

    def _save(self, data: dict[str, Any]) -> None:
        self.store.save(data)

    def _locked(self) -> Any:
        return self.store.locked()

    def snapshot(self) -> dict[str, Any]:
        """The whole learning state (for tests, ``state show`` and replay checks)."""
        with self._locked():
            return self._load()

    # -- recording -----------------------------------------------------------------------
    def record_drift_detection(self, event: Any, severity: str) -> None:
        """Remember a drift.detected event by its execution id (idempotent)."""
        p = event.payload
        with self._locked():
            data = self._load()
            det = data["detections"]
            det[p["execution_id"]] = {
                "event_id": event.id,
                "function_name": p["function_name"],
                "model_name": p["model_name"],
                "feature_name": p.get("feature_name"),
                "drift_score": p["drift_score"],
                "statistical_significance": p.get("statistical_significance", 0),
                "severity": severity,
                "at": event.timestamp,
            }
            self._trim(data)
            self._save(data)

    def incorporate_feedback(
        self,
        *,
        feedback_id: str,
        execution_id: str,
        was_real_drift: bool,
        confidence: float,
        kind: str,
        at: float,
        context: str | None = None,
        function_name: str | None = None,
    ) -> str | None:
        """Record one piece of feedback; return the function it concerns (None if unknown).

        Feedback about an execution the engine never saw is kept (it may be
        matched later) but cannot be attributed to a function unless the
        feedback names it.
        """
        with self._locked():
            data = self._load()
            det = data["detections"].get(execution_id)
            fn = function_name or (det["function_name"] if det else None)
            data["feedback"][feedback_id] = {
                "execution_id": execution_id,
                "was_real_drift": bool(was_real_drift),
                "confidence": float(confidence),
                "kind": kind,
                "at": at,
                "context": context,
                "function_name": fn,
            }
            self._save(data)
            return fn

    def incorporate_human_feedback(
        self,
        *,
        feedback_id: str,
        execution_id: str,
        was_real_drift: bool,
        confidence: float,
        at: float,
        context: str | None = None,
        function_name: str | None = None,
    ) -> str | None:
        """The seed's name for human validation feedback."""
        return self.incorporate_feedback(
            feedback_id=feedback_id,
            execution_id=execution_id,
            was_real_drift=was_real_drift,
            confidence=confidence,
            kind="human",
            at=at,
            context=context,
            function_name=function_name,
        )

    def incorporate_retraining_feedback(
        self, *, feedback_id: str, execution_id: str, improvement_confirmed: bool, performance_delta: float, at: float
    ) -> str | None:
        """Retraining that did not improve the model counts as a false positive of the drift alert."""
        return self.incorporate_feedback(
            feedback_id=feedback_id,
            execution_id=execution_id,
            was_real_drift=improvement_confirmed,
            confidence=1.0,
            kind="retraining",
            at=at,
            context=f"performance_delta={performance_delta:+.6g}",
        )

    def _trim(self, data: dict[str, Any]) -> None:
        det = data["detections"]
        cap = self.settings.max_detections_per_function
        per_fn: dict[str, list[tuple[float, str]]] = {}
        for ex, d in det.items():
            per_fn.setdefault(d["function_name"], []).append((d["at"], ex))
        for items in per_fn.values():
            if len(items) > cap:
                for _, ex in sorted(items)[: len(items) - cap]:
                    det.pop(ex, None)

    # -- analysis ------------------------------------------------------------------------
    def validations(self, data: dict[str, Any], function_name: str, now: float) -> list[dict[str, Any]]:
        """Feedback about ``function_name`` within the window, one per execution (latest wins)."""
        horizon = now - self.settings.window_days * 86400
        latest: dict[str, dict[str, Any]] = {}
        for fid, f in sorted(data["feedback"].items(), key=lambda kv: (kv[1]["at"], kv[0])):
            det = data["detections"].get(f["execution_id"])
            fn = f.get("function_name") or (det["function_name"] if det else None)
            if fn != function_name or f["at"] < horizon or f["at"] > now:
                continue
            latest[f["execution_id"]] = {**f, "feedback_id": fid, "detection": det}
        return list(latest.values())

    def detect_patterns(self, function_name: str, now: float | None = None) -> list[Pattern]:
        """Every pattern that currently holds for ``function_name`` (see the module doc)."""
        with self._locked():
            data = self._load()
        return self._detect(data, function_name, time.time() if now is None else now)

    def _detect(self, data: dict[str, Any], fn: str, now: float) -> list[Pattern]:
        s = self.settings
        vals = self.validations(data, fn, now)
        out: list[Pattern] = []
        fps = [v for v in vals if not v["was_real_drift"]]
        n = len(vals)
        if n >= s.min_samples:
            rate = len(fps) / n
            if rate > s.fp_rate_threshold:
                out.append(
                    Pattern(
                        "threshold_too_sensitive",
                        fn,
                        confidence=rate * min(1.0, n / (2 * s.min_samples)) ** 0.5,
                        sample_size=n,
                        correlation_strength=rate,
                        business_impact=_impact(rate),
                        recommended_action=(
                            f"Raise the drift threshold of {fn}: {len(fps)} of {n} validated alerts "
                            f"({rate:.0%}) were false positives within {s.window_days:g} days."
                        ),
                        detail={"false_positive_rate": rate, "false_positives": len(fps)},
                    )
                )
        if len(fps) >= s.min_samples:
            hours = Counter(time.gmtime(v["detection"]["at"] if v["detection"] else v["at"]).tm_hour for v in fps)
            days = Counter(time.gmtime(v["detection"]["at"] if v["detection"] else v["at"]).tm_wday for v in fps)
            (hour, hn), (day, dn) = hours.most_common(1)[0], days.most_common(1)[0]
            hshare, dshare = hn / len(fps), dn / len(fps)
            if max(hshare, dshare) >= s.seasonal_concentration:
                by_hour = hshare >= dshare
                share = hshare if by_hour else dshare
                when = (
                    f"{hour:02d}:00-{hour:02d}:59 UTC"
                    if by_hour
                    else ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")[day]
                )
                out.append(
                    Pattern(
                        "false_positive_seasonal",
                        fn,
                        confidence=share,
                        sample_size=len(fps),
                        correlation_strength=share,
                        business_impact=_impact(share),
                        recommended_action=(
                            f"Add seasonality to {fn}'s reference window: {share:.0%} of its "
                            f"{len(fps)} false positives fall on {when}."
                        ),
                        detail={"by": "hour" if by_hour else "weekday", "bucket": hour if by_hour else day},
                    )
                )
        edge = [
            v
            for v in vals
            if v["was_real_drift"]
            and v["detection"] is not None
            and v["detection"]["drift_score"] <= s.low_score_threshold
        ]
        confirmed = [v for v in vals if v["was_real_drift"]]
        if len(edge) >= s.min_edge_cases:
            strength = len(edge) / max(1, len(confirmed))
            out.append(
                Pattern(
                    "missing_edge_case",
                    fn,
                    confidence=strength,
                    sample_size=len(edge),
                    correlation_strength=strength,
                    business_impact="high",
                    recommended_action=(
                        f"Handle the edge case in {fn}: {len(edge)} confirmed drifts scored at most "
                        f"{s.low_score_threshold:g} and were under-alerted."
                    ),
                    detail={"confirmed": len(confirmed)},
                )
            )
        return out

    def should_regenerate(
        self,
        function_name: str | None,
        version: str | None = None,
        now: float | None = None,
        cause_id: str | None = None,
    ) -> list[Pattern]:
        """Patterns for ``function_name`` not yet reported for ``version``; empty means no.

        For a ``cause_id`` already decided (see :meth:`decide`) the recorded
        decision is returned unchanged, so a retried or replayed handler emits
        exactly the same (deduplicated) follow-ups, whatever happened since.
        """
        if function_name is None:
            return []
        with self._locked():
            data = self._load()
            return self._unreported(data, function_name, version, time.time() if now is None else now, cause_id)

    def _unreported(
        self, data: dict[str, Any], fn: str, version: str | None, now: float, cause_id: str | None
    ) -> list[Pattern]:
        if cause_id is not None and cause_id in data["decisions"]:
            return [Pattern(**p) for p in data["decisions"][cause_id]["patterns"]]
        reported = data["reported"].get(fn, {})
        return [
            p for p in self._detect(data, fn, now) if reported.get(p.pattern_type, {}).get("version") != (version or "")
        ]

    def decide(self, function_name: str | None, version: str | None, now: float, cause_id: str) -> list[Pattern]:
        """:meth:`should_regenerate` and :meth:`mark_reported` in one step, remembered per cause.

        The first decision for ``cause_id`` (empty or not) is stored; later
        calls with the same cause return it, so replays are idempotent.
        """
        if function_name is None:
            return []
        with self._locked():
            data = self._load()
            patterns = self._unreported(data, function_name, version, now, cause_id)
            if cause_id not in data["decisions"]:
                self._mark(data, function_name, patterns, version, cause_id)
                self._save(data)
            return patterns

    def mark_reported(
        self, function_name: str, patterns: list[Pattern], version: str | None, cause_id: str | None = None
    ) -> None:
        """Remember that ``patterns`` were reported for ``version`` (by event ``cause_id``)."""
        with self._locked():
            data = self._load()
            self._mark(data, function_name, patterns, version, cause_id)
            self._save(data)

    @staticmethod
    def _mark(
        data: dict[str, Any], fn: str, patterns: list[Pattern], version: str | None, cause_id: str | None
    ) -> None:
        """Record the patterns as reported and, for a cause, remember its decision (first one wins)."""
        if cause_id is not None and cause_id not in data["decisions"]:
            data["decisions"][cause_id] = {
                "function_name": fn,
                "version": version or "",
                "patterns": [asdict(p) for p in patterns],
            }
        rep = data["reported"].setdefault(fn, {})
        for p in patterns:
            if rep.get(p.pattern_type, {}).get("version") != (version or ""):
                rep[p.pattern_type] = {"version": version or "", "by": cause_id}


__all__ = [
    "MAX_STATE_BYTES",
    "SECTIONS",
    "STATE_FILE",
    "LearningEngine",
    "LearningSettings",
    "Pattern",
    "parse_learning",
]
