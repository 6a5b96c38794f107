"""What ``poetctl daemon --mode nats`` attaches to its loop: the same metrics, logs and alerts as on the
spool, with the backlog gauges read from NATS, and the ``top`` stats in the lease bucket.

The backlog gauges (:func:`poetctl.backends.nats.status.nats_figures`: counts,
lag, daemons, per-partition consumer pending / ack pending / redelivered /
lag / owner, stream sizes) are read when scraped, cached 5 s, from the
server's own figures: no per-event work. The stats a daemon keeps for
``poetctl top`` go to the lease bucket as ``s.<daemon name>`` about once a
second (sent without waiting; the bucket's TTL removes them when the daemon
stops), so ``top --mode nats`` on any machine sees every daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .metrics import DaemonMetrics
from .wiring import STATS_EVERY, Observability, StatsRing, finish

if TYPE_CHECKING:
    from ..config import Config

RATE_WINDOW = 10.0


class NatsStats(StatsRing):
    """Publishes this daemon's totals to the lease bucket (``s.<name>``) for ``top --mode nats``."""

    def __init__(
        self, transport: Any, name: str, metrics: DaemonMetrics, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(metrics, clock, STATS_EVERY)
        self.t = transport
        self.key = f"s.{name}"

    def document(self, now: float) -> dict[str, Any]:
        doc = super().document(now)
        ring = doc["ring"]
        first = next((r for r in ring if r[0] >= now - RATE_WINDOW), ring[-1])
        dt = ring[-1][0] - first[0]
        doc["rate_per_second"] = round((ring[-1][1] - first[1]) / dt, 3) if dt > 0 else 0.0
        doc["counts"] = {"processed": int(ring[-1][1]), "dead": int(ring[-1][4])}
        return doc

    def publish(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.t.link.submit(self.t.lease_kv.put(self.key, data))  # never waits: top's data must not slow the loop

    def close(self) -> None:
        async def drop() -> None:
            await self.t.lease_kv.delete(self.key)

        try:
            self.t.link.run(drop(), timeout=5)
        except Exception:  # best effort: the bucket's TTL removes it anyway
            pass


def nats_observability(
    router: Any,
    cfg: Config,
    transport: Any,
    name: str,
    *,
    metrics_addr: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Observability:
    """Metrics (served on ``metrics_addr`` if given), log context, alerts and ``top``'s stats, over NATS."""
    from ..backends.nats.status import nats_figures
    from .metrics import instrument_router

    lease = float(transport.settings.lease_ttl)
    metrics = DaemonMetrics(clock=clock, backlog=lambda: nats_figures(transport, lease))
    instrument_router(router, metrics.emit)
    return finish(router, cfg, metrics, NatsStats(transport, name, metrics, clock), metrics_addr, clock)


__all__ = ["NatsStats", "nats_observability"]
