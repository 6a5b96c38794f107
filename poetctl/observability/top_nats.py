"""``poetctl top --mode nats``: the same snapshot as on the spool, from NATS.

Sources: the status figures over NATS (:class:`poetctl.backends.nats.status.NatsStatus`:
counts, lag, per-partition consumers and owners, the daemons of the lease
bucket), each daemon's stats entry ``s.<name>`` in the lease bucket (rates
from its ring, handler percentiles, errors: :mod:`.wiring_nats`) and the
newest dead letters of the DLQ stream (read from its end: a few messages).
"""

from __future__ import annotations

import time
from typing import Any

from .top import DEAD_SHOWN, _added, _handlers, _merge_handlers, _ring_rates


def recent_letters(t: Any, n: int = DEAD_SHOWN) -> list[dict[str, Any]]:
    """The ``n`` newest dead letters (DLQ stream order), described by their headers."""
    from ..backends.nats.dead import unheader

    async def go() -> list[dict[str, Any]]:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        s = t.settings
        info = await t.link.jsm.stream_info(s.dead_stream)
        if not info.state.messages:
            return []
        start = max(int(info.state.first_seq), int(info.state.last_seq) - 4 * n)
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        rows = []
        async for m in t.link.read(s.dead_stream, cfg):
            h = m.headers or {}
            attempts = h.get("Poet-Attempts")
            dead_at = h.get("Poet-Dead-At")
            rows.append(
                {
                    "id": h.get("Poet-Id"),
                    "reason": unheader(h.get("Poet-Reason")),
                    "handler": unheader(h.get("Poet-Handler")),
                    "attempts": int(attempts) if attempts and attempts.isdigit() else attempts,
                    "error": unheader(h.get("Poet-Error")),
                    "dead_at": float(dead_at) if dead_at and dead_at.replace(".", "", 1).isdigit() else None,
                }
            )
        return rows[-n:][::-1]

    out: list[dict[str, Any]] = t.link.run(go(), timeout=60)
    return out


def snapshot_nats(t: Any, now: float | None = None, prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``top`` shows (the spool snapshot's keys, plus ``partitions``), over NATS."""
    from ..backends.nats.status import NatsStatus
    from ..ops.status import collect

    now = time.time() if now is None else now
    source = NatsStatus(t)
    doc = collect(source, lease_seconds=float(t.settings.lease_ttl), now=now)
    handlers: dict[str, dict[str, Any]] = {}
    totals = {"handled": 0.0, "emitted": 0.0, "errors": 0.0, "dead": 0.0, "retried": 0.0}
    daemons = []
    for d in doc["daemons"]:
        st = source.stats.get(str(d["owner"]))
        rates = _ring_rates(st.get("ring") or []) if st else None
        rates = rates or {"handled": 0.0}
        for k, v in rates.items():
            totals[k] += v
        if st:
            _merge_handlers(handlers, _handlers(st))
        counts = d.get("counts") or {}
        daemons.append(
            {
                "owner": d["owner"],
                "pid": d.get("pid"),
                "alive": True,
                "heartbeat_age_seconds": d["age_seconds"],
                "inflight": d.get("inflight"),
                "processed": counts.get("processed"),
                "dead": counts.get("dead"),
                "rates": rates,
                "partitions": d.get("partitions", []),
            }
        )
    return {
        "spool": doc["spool"],
        "at": round(now, 3),
        "counts": doc["counts"],
        "lag_seconds": doc["lag_seconds"],
        "rates": {**{k: round(v, 2) for k, v in totals.items()}, "added": _added(doc["counts"], now, prev)},
        "handlers": dict(sorted(handlers.items())),
        "daemons": daemons,
        "recent_dead": recent_letters(t),
        "fsck": None,
        "filesystem": None,
        "partitions": source.info.get("partitions", []),
    }


__all__ = ["recent_letters", "snapshot_nats"]
