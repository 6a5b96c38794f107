"""What ``poetctl daemon`` attaches to its loop: metrics, logs, alerts, the stats file for ``top``.

One call (:func:`daemon_observability`) so ``cli/daemon.py`` only parses its
flags and passes ``.middleware`` on; :meth:`Observability.close` stops the
HTTP server and removes the stats file.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..daemon.middleware import Middleware
from .metrics import DaemonMetrics

if TYPE_CHECKING:
    from ..config import Config
    from ..transport import Fetched

STATS_EVERY = 1.0  # seconds between stats-file writes (top refreshes every second)
RING = 120  # totals kept in the stats file (about two minutes)


class StatsFile(Middleware):
    """Rewrites this daemon's ``run/stats`` file from ``on_fetch`` when due (main thread)."""

    def __init__(
        self,
        spool: Path,
        metrics: DaemonMetrics,
        clock: Callable[[], float] = time.time,
        every: float = STATS_EVERY,
    ) -> None:
        from ..backends.fs.obs_stats import StatsWriter, stats_name
        from ..backends.fs.owner import HOST

        self.host = HOST  # as in the heartbeat's owner name, so top pairs the two
        self.pid = os.getpid()
        self.writer = StatsWriter(spool, stats_name(self.host, self.pid))
        self.metrics = metrics
        self.clock = clock
        self.every = every
        self.due = 0.0
        self.started = clock()
        self.ring: deque[list[float]] = deque(maxlen=RING)
        self.failed = False

    def on_fetch(self, fetched: Fetched) -> None:
        now = self.clock()
        if now >= self.due:
            self.due = now + self.every
            self.write(now)

    def write(self, now: float) -> None:
        snap = self.metrics.snapshot()
        totals: dict[str, float] = {}
        for row in snap["counters"]:
            totals[row[0]] = totals.get(row[0], 0) + row[-1]
        self.ring.append(
            [
                round(now, 3),
                totals.get("poetctl_events_handled", 0),
                totals.get("poetctl_events_emitted", 0),
                totals.get("poetctl_handler_errors", 0),
                totals.get("poetctl_events_dead_lettered", 0),
                totals.get("poetctl_events_retried", 0),
            ]
        )
        doc = {"host": self.host, "pid": self.pid, "started_at": self.started, "at": now, **snap}
        doc["ring"] = list(self.ring)
        try:
            self.writer.write(doc)
            self.failed = False
        except Exception as exc:  # top's data must never stop the daemon
            if not self.failed:
                from ..daemon import log

                log.warning("cannot write the stats file for poetctl top", error=log.error_text(exc))
            self.failed = True

    def close(self) -> None:
        self.writer.close()


@dataclass
class Observability:
    middleware: list[Middleware]
    metrics: DaemonMetrics
    server: Any = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT/metrics`` as bound (port 0 in the address picks a free one)."""
        if self.server is None:
            return None
        host, port = self.server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for c in self.closers:
            c()
        self.closers.clear()


def daemon_observability(
    router: Any,
    cfg: Config,
    *,
    lease_seconds: float,
    metrics_addr: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Observability:
    """Metrics (served on ``metrics_addr`` if given), log context, alerts, the stats file."""
    from .alerts import AlertEvaluator, AlertMiddleware, AlertSettings, router_emitter, sample_from
    from .backlog import spool_figures
    from .daemonlog import LogContext
    from .metrics import instrument_router

    spool = Path(cfg.spool)
    metrics = DaemonMetrics(clock=clock, backlog=lambda: spool_figures(spool, lease_seconds))
    instrument_router(router, metrics.emit)
    stats = StatsFile(spool, metrics, clock)
    mw: list[Middleware] = [metrics, LogContext(), stats]
    settings = AlertSettings.from_config(dict(cfg.alerts))
    if settings.enabled:
        evaluator = AlertEvaluator(settings, router_emitter(router), clock)
        mw.append(AlertMiddleware(evaluator, lambda now: sample_from(now, metrics.backlog_figures(), metrics), clock))
    obs = Observability(mw, metrics, closers=[stats.close])
    if metrics_addr:
        from ..errors import BackendUnavailable
        from .metrics import serve

        try:
            obs.server = serve(metrics_addr, metrics.registry())
        except OSError as exc:
            obs.close()
            raise BackendUnavailable(f"--metrics-addr {metrics_addr}: cannot listen: {exc.strerror or exc}") from None
        except ImportError:
            obs.close()
            raise BackendUnavailable("--metrics-addr needs prometheus-client: pip install 'poetctl[metrics]'") from None
    return obs


__all__ = ["Observability", "StatsFile", "daemon_observability"]
