"""Alerts on the system itself, sent through the event flow as ``system.alert`` events.

The daemon runs an :class:`AlertEvaluator` from a middleware
(:class:`AlertMiddleware`, ``on_fetch`` when due). Each evaluation takes a
:class:`Sample` (spool figures, this daemon's metrics, the process), checks
every condition against its ``[alerts]`` threshold, and emits
``system.alert`` with ``status`` ``firing`` when a condition has held for
``for_seconds`` and ``resolved`` when it has been clear for ``clear_seconds``
(damping: a flapping condition neither fires nor resolves on every blip).
``condition`` is the dedup key: integrations (PagerDuty ``dedup_key``) group
on it, and a resolved event closes what the firing one opened.

Conditions (severity): ``daemon_down``, ``high_lag``, ``message_loss``,
``disk_nearly_full`` (critical); ``growing_lag``, ``error_rate``,
``latency_degradation``, ``resource_pressure`` (warning). The clock is
injected, so tests step it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..daemon.middleware import Middleware

if TYPE_CHECKING:
    from ..transport import Fetched

CRITICAL, WARNING = "critical", "warning"
SEVERITY = {
    "daemon_down": CRITICAL,
    "high_lag": CRITICAL,
    "message_loss": CRITICAL,
    "disk_nearly_full": CRITICAL,
    "growing_lag": WARNING,
    "error_rate": WARNING,
    "latency_degradation": WARNING,
    "resource_pressure": WARNING,
}


@dataclass(slots=True)
class AlertSettings:
    """The ``[alerts]`` table (configspec has each key's range and default)."""

    enabled: bool = True
    interval: float = 15.0  # seconds between evaluations
    for_seconds: float = 60.0  # a condition must hold this long to fire
    clear_seconds: float = 60.0  # ... and be clear this long to resolve
    min_daemons: int = 1  # daemon_down below this many live daemons (the evaluating one counts)
    warn_lag: float = 60.0
    max_lag: float = 300.0
    lag_window: float = 300.0  # growing_lag: pending grew over this window with lag > warn_lag
    disk_min_free: float = 0.10  # disk_nearly_full below this fraction free
    error_rate: float = 0.10  # error_rate: failed handler runs / runs over lag_window
    min_runs: int = 20
    latency_factor: float = 3.0  # latency_degradation: recent mean > factor x long-run mean
    latency_min_seconds: float = 0.1  # ... and above this
    max_rss_mb: float = 0.0  # resource_pressure: RSS above this (0: not checked)
    max_open_files_ratio: float = 0.8  # ... or open files above this share of the soft limit

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> AlertSettings:
        from ..ops.status import parse_duration

        s = cls()
        for k, v in table.items():
            if k in cls.__dataclass_fields__:
                setattr(s, k, parse_duration(v, f"[alerts] {k}") if isinstance(v, str) else v)
        return s


@dataclass(slots=True)
class Sample:
    """What one evaluation looks at (None: unknown, the condition is not judged)."""

    at: float
    lag_seconds: float | None = None
    pending: int | None = None
    daemons_alive: int | None = None
    daemons_stale: int | None = None
    fsck_loss: int | None = None
    disk_free_ratio: float | None = None
    handler_runs: int | None = None  # cumulative
    handler_errors: int | None = None  # cumulative
    handler_seconds: float | None = None  # cumulative sum of durations
    rss_bytes: int | None = None
    open_files: int | None = None
    open_files_limit: int | None = None


@dataclass(slots=True)
class _State:
    holding_since: float | None = None
    clear_since: float | None = None
    firing: bool = False
    value: Any = None


@dataclass
class AlertEvaluator:
    """Judges samples and calls ``emit(payload)`` for each alert that fires or resolves."""

    settings: AlertSettings
    emit: Callable[[dict[str, Any]], None]
    clock: Callable[[], float] = time.time
    service: str = "poetctl.daemon"
    states: dict[str, _State] = field(default_factory=dict)
    history: deque[Sample] = field(default_factory=lambda: deque(maxlen=4096))

    def evaluate(self, sample: Sample) -> list[dict[str, Any]]:
        """Judge ``sample``; the payloads emitted (firing or resolved)."""
        self.history.append(sample)
        old = self._at(sample.at - self.settings.lag_window)
        out = []
        for name, (holds, value, threshold, summary) in self._judge(sample, old).items():
            if holds is None:
                continue
            p = self._step(name, holds, sample.at, value, threshold, summary)
            if p is not None:
                self.emit(p)
                out.append(p)
        while len(self.history) > 1 and self.history[1].at <= sample.at - self.settings.lag_window:
            self.history.popleft()  # keep one sample at or before the window's start
        return out

    def _at(self, when: float) -> Sample | None:
        """The newest sample taken at or before ``when``."""
        best = None
        for s in self.history:
            if s.at <= when:
                best = s
        return best

    def _judge(self, s: Sample, old: Sample | None) -> dict[str, tuple[bool | None, Any, Any, str]]:
        t = self.settings
        j: dict[str, tuple[bool | None, Any, Any, str]] = {}
        if s.daemons_alive is not None:
            down = s.daemons_alive < t.min_daemons or bool(s.daemons_stale)
            j["daemon_down"] = (
                down,
                {"alive": s.daemons_alive, "stale": s.daemons_stale},
                t.min_daemons,
                f"{s.daemons_alive} daemon(s) alive, {s.daemons_stale or 0} with a stale heartbeat",
            )
        if s.lag_seconds is not None:
            j["high_lag"] = (
                s.lag_seconds > t.max_lag,
                s.lag_seconds,
                t.max_lag,
                f"oldest pending event {s.lag_seconds:.0f}s old",
            )
            if old is not None and old.pending is not None and s.pending is not None:
                growing = s.lag_seconds > t.warn_lag and s.pending > old.pending
                j["growing_lag"] = (
                    growing,
                    s.lag_seconds,
                    t.warn_lag,
                    f"lag {s.lag_seconds:.0f}s and pending grew from {old.pending} to {s.pending}",
                )
        if s.fsck_loss is not None:
            j["message_loss"] = (
                s.fsck_loss > 0,
                s.fsck_loss,
                0,
                f"the last fsck found {s.fsck_loss} lost or unreadable event(s)",
            )
        if s.disk_free_ratio is not None:
            j["disk_nearly_full"] = (
                s.disk_free_ratio < t.disk_min_free,
                round(s.disk_free_ratio, 4),
                t.disk_min_free,
                f"{s.disk_free_ratio:.1%} free on the spool's filesystem",
            )
        if old is not None and None not in (s.handler_runs, s.handler_errors, old.handler_runs, old.handler_errors):
            runs = s.handler_runs - old.handler_runs  # type: ignore[operator]
            errs = s.handler_errors - old.handler_errors  # type: ignore[operator]
            if runs >= t.min_runs:
                rate = errs / runs
                j["error_rate"] = (
                    rate > t.error_rate,
                    round(rate, 4),
                    t.error_rate,
                    f"{errs} of {runs} handler runs failed",
                )
            else:
                j["error_rate"] = (False, 0.0, t.error_rate, "")
        if old is not None and None not in (s.handler_runs, s.handler_seconds, old.handler_runs, old.handler_seconds):
            runs = s.handler_runs - old.handler_runs  # type: ignore[operator]
            if runs >= t.min_runs and s.handler_runs:
                recent = (s.handler_seconds - old.handler_seconds) / runs  # type: ignore[operator]
                base = s.handler_seconds / s.handler_runs  # type: ignore[operator]
                slow = recent > t.latency_min_seconds and recent > t.latency_factor * base
                j["latency_degradation"] = (
                    slow,
                    round(recent, 6),
                    round(t.latency_factor * base, 6),
                    f"mean handler time {recent * 1000:.0f} ms vs {base * 1000:.0f} ms long-run",
                )
        pressure = None
        why = ""
        if s.rss_bytes is not None and t.max_rss_mb > 0:
            pressure = s.rss_bytes > t.max_rss_mb * 1024 * 1024
            why = f"RSS {s.rss_bytes / 1048576:.0f} MiB"
        if s.open_files is not None and s.open_files_limit:
            files = s.open_files > t.max_open_files_ratio * s.open_files_limit
            pressure = bool(pressure) or files
            why = (why + ", " if why else "") + f"{s.open_files} of {s.open_files_limit} files open"
        if pressure is not None:
            j["resource_pressure"] = (pressure, {"rss_bytes": s.rss_bytes, "open_files": s.open_files}, None, why)
        return j

    def _step(
        self, name: str, holds: bool, now: float, value: Any, threshold: Any, summary: str
    ) -> dict[str, Any] | None:
        st = self.states.setdefault(name, _State())
        t = self.settings
        if holds:
            st.clear_since = None
            if st.holding_since is None:
                st.holding_since = now
            st.value = value
            if not st.firing and now - st.holding_since >= t.for_seconds:
                st.firing = True
                return self._payload(name, "firing", value, threshold, summary, st.holding_since)
            return None
        st.holding_since = None
        if st.firing:
            if st.clear_since is None:
                st.clear_since = now
            if now - st.clear_since >= t.clear_seconds:
                st.firing = False
                st.clear_since = None
                return self._payload(name, "resolved", value, threshold, summary or "condition cleared", now)
        return None

    def _payload(
        self, name: str, status: str, value: Any, threshold: Any, summary: str, since: float
    ) -> dict[str, Any]:
        p: dict[str, Any] = {
            "condition": name,
            "status": status,
            "severity": SEVERITY[name],
            "summary": summary,
            "since": round(since, 3),
            "service": self.service,
            "host": socket.gethostname()[:255] or "localhost",
        }
        if value is not None:
            p["value"] = value
        if threshold is not None:
            p["threshold"] = threshold
        return p

    @property
    def firing(self) -> list[str]:
        return sorted(n for n, s in self.states.items() if s.firing)


def process_figures() -> dict[str, int | None]:
    """This process's RSS and open files (Linux /proc; None elsewhere)."""
    out: dict[str, int | None] = {"rss_bytes": None, "open_files": None, "open_files_limit": None}
    try:
        with open("/proc/self/statm", "rb") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        out["open_files"] = len(os.listdir("/proc/self/fd"))
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        out["open_files_limit"] = soft if soft > 0 else None
    except (OSError, ValueError, IndexError):
        pass
    return out


def sample_from(now: float, figures: dict[str, Any] | None, metrics: Any | None) -> Sample:
    """A :class:`Sample` from a status document (:mod:`.backlog`) and a :class:`~.metrics.DaemonMetrics`."""
    s = Sample(at=now, **process_figures())
    if figures:
        s.lag_seconds = float(figures.get("oldest_pending_age_seconds") or 0.0)
        s.pending = int(figures["counts"]["pending"])
        s.daemons_alive = int(figures["daemons_alive"])
        s.daemons_stale = int(figures["daemons_stale"])
        fsck = figures.get("fsck")
        s.fsck_loss = int(fsck["loss"]) if fsck else None
        fs = figures.get("filesystem")
        if fs and fs["size_bytes"]:
            s.disk_free_ratio = fs["avail_bytes"] / fs["size_bytes"]
    if metrics is not None:
        counters = metrics.accs.counters()
        hists = metrics.accs.histograms()
        s.handler_errors = sum(v for k, v in counters.items() if k[0] == "poetctl_handler_errors")
        runs = [(sum(c), total) for (m, _), (c, total) in hists.items() if m == "poetctl_handler_duration_seconds"]
        s.handler_runs = sum(r for r, _ in runs)
        s.handler_seconds = sum(t for _, t in runs)
    return s


class AlertMiddleware(Middleware):
    """Runs the evaluator from the loop's ``on_fetch`` every ``settings.interval`` seconds.

    With ``background`` (what ``poetctl daemon`` uses) each look runs on its own thread, one at a time:
    sampling reads the spool's figures, which lists ``pending/``, and at a million pending that takes
    seconds the loop must not stall for. Without it (a Harness on a fake clock) the look runs in
    ``on_fetch``, so a stepped test sees its outcome at once.
    """

    def __init__(
        self,
        evaluator: AlertEvaluator,
        sampler: Callable[[float], Sample],
        clock: Callable[[], float] = time.time,
        *,
        background: bool = False,
    ) -> None:
        self.evaluator = evaluator
        self.sampler = sampler
        self.clock = clock
        self.background = background
        self.looking: threading.Thread | None = None
        # The first look after one interval: reading the spool's figures lists pending/, which a
        # daemon (or a --once run) that just started on a big backlog should not wait for.
        self.due = clock() + evaluator.settings.interval

    def on_fetch(self, fetched: Fetched) -> None:
        now = self.clock()
        if now < self.due or (self.looking is not None and self.looking.is_alive()):
            return  # not due, or the last look still reads the spool: the next one starts after it
        self.due = now + self.evaluator.settings.interval
        if not self.background:
            self.look(now)
            return
        self.looking = threading.Thread(target=self.look, args=(now,), name="poetctl-alerts", daemon=True)
        self.looking.start()

    def look(self, now: float) -> None:
        """One sample and evaluation; a failure is logged, never raised (alerting must not stop processing)."""
        try:
            self.evaluator.evaluate(self.sampler(now))
        except Exception as exc:
            from ..daemon import log

            log.error("alert evaluation failed", error=log.error_text(exc))


def router_emitter(router: Any) -> Callable[[dict[str, Any]], None]:
    """``emit`` for the evaluator: ``system.alert`` through ``router``; a failure is logged, never raised."""

    def emit(payload: dict[str, Any]) -> None:
        from ..daemon import log

        try:
            router.emit("system.alert", payload, source="poetctl.daemon")
        except Exception as exc:  # alerting must never stop processing
            log.error("cannot emit system.alert", condition=payload.get("condition"), error=log.error_text(exc))
            return
        lvl = log.warning if payload["status"] == "firing" else log.info
        lvl(
            f"alert {payload['status']}",
            condition=payload["condition"],
            severity=payload["severity"],
            summary=payload["summary"],
        )

    return emit


__all__ = [
    "SEVERITY",
    "AlertEvaluator",
    "AlertMiddleware",
    "AlertSettings",
    "Sample",
    "process_figures",
    "router_emitter",
    "sample_from",
]
