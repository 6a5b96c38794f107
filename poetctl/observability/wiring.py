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


class StatsRing(Middleware):
    """Publishes this daemon's totals (a ring of about two minutes) from ``on_fetch`` when due (main thread).

    :meth:`publish` says where: a file in the spool (:class:`StatsFile`) or the
    NATS lease bucket (:class:`~.wiring_nats.NatsStats`); ``poetctl top`` reads them.
    """

    def __init__(
        self, metrics: DaemonMetrics, clock: Callable[[], float] = time.time, every: float = STATS_EVERY
    ) -> None:
        from ..backends.fs.owner import HOST

        self.host = HOST  # as in the heartbeat's owner name, so top pairs the two
        self.pid = os.getpid()
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

    def document(self, now: float) -> dict[str, Any]:
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
        return doc

    def write(self, now: float) -> None:
        doc = self.document(now)
        try:
            self.publish(doc)
            self.failed = False
        except Exception as exc:  # top's data must never stop the daemon
            if not self.failed:
                from ..daemon import log

                log.warning("cannot write the stats for poetctl top", error=log.error_text(exc))
            self.failed = True

    def publish(self, doc: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release here (the file writer removes its file)."""


class StatsFile(StatsRing):
    """Rewrites this daemon's ``run/stats`` file (see :class:`StatsRing`)."""

    def __init__(
        self,
        spool: Path,
        metrics: DaemonMetrics,
        clock: Callable[[], float] = time.time,
        every: float = STATS_EVERY,
    ) -> None:
        from ..backends.fs.obs_stats import StatsWriter, stats_name

        super().__init__(metrics, clock, every)
        self.writer = StatsWriter(spool, stats_name(self.host, self.pid))

    def publish(self, doc: dict[str, Any]) -> None:
        self.writer.write(doc)

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
    forward: Callable[[], Any] | None = None,
) -> Observability:
    """Metrics (served on ``metrics_addr`` if given), log context, alerts, the stats file.

    ``forward`` (hybrid mode) returns the forwarder's backlog (count, oldest age), served as gauges.
    """
    from .backlog import spool_figures
    from .metrics import instrument_router

    spool = Path(cfg.spool)

    def figures() -> dict[str, Any]:
        doc = spool_figures(spool, lease_seconds)
        b = forward() if forward is not None else None
        if b is not None:
            doc["forward"] = {"backlog": b.count, "oldest_age_seconds": b.oldest_age}
        return doc

    metrics = DaemonMetrics(clock=clock, backlog=figures)
    instrument_router(router, metrics.emit)
    stats = StatsFile(spool, metrics, clock)
    return finish(router, cfg, metrics, stats, metrics_addr, clock)


def finish(
    router: Any,
    cfg: Config,
    metrics: DaemonMetrics,
    stats: StatsRing,
    metrics_addr: str | None,
    clock: Callable[[], float],
) -> Observability:
    """The middleware list (metrics, log context, stats, alerts) and the metrics server; any backend."""
    from .alerts import AlertEvaluator, AlertMiddleware, AlertSettings, router_emitter, sample_from
    from .daemonlog import LogContext

    mw: list[Middleware] = [metrics, LogContext(), stats]
    settings = AlertSettings.from_config(dict(cfg.alerts))
    if settings.enabled:
        evaluator = AlertEvaluator(settings, router_emitter(router), clock)
        sampler = lambda now: sample_from(now, metrics.backlog_figures(), metrics)  # noqa: E731
        mw.append(AlertMiddleware(evaluator, sampler, clock, background=True))
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


__all__ = ["Observability", "StatsFile", "StatsRing", "daemon_observability"]
