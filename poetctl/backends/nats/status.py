"""``poetctl status`` (and the metrics, ``top``) over NATS: stream, consumers, partition owners, daemons.

Cheap at any size: one ``stream_info`` per stream, one ``consumer_info`` per
partition, one message read per partition with a backlog (its oldest
unacknowledged event, for the lag) and one read of the lease bucket. No
per-event work: the counts come from the server's own figures:

* pending = the partition consumers' ``num_pending`` (not yet delivered);
* inflight = their ``num_ack_pending`` (delivered, not yet acked: being
  handled, or waiting for a retry);
* dead = messages in the dead-letter stream; corrupt = in the quarantine stream;
* processed = the rest of the event stream (each event has one copy there).

Daemons are the lease bucket's ``m.<name>`` entries (refreshed every keeper
tick, gone ``lease_ttl`` after their daemon stops); ``s.<name>`` holds the
counters a daemon publishes for ``top`` (:mod:`poetctl.observability.natsstats`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ...errors import InvalidData
from ..memory import decode
from . import subjects
from .transport import NatsTransport

STATS_PREFIX = "s."
MEMBER_PREFIX = "m."


async def _stream(t: NatsTransport, name: str) -> Any:
    from nats.js.errors import NotFoundError

    try:
        return await t.link.jsm.stream_info(name)
    except NotFoundError:
        return None


async def lease_entries(t: NatsTransport) -> dict[str, tuple[bytes, float]]:
    """Every live entry of the lease bucket: key -> (value, when written, Unix time)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    bucket = t.settings.lease_bucket
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=30.0,
        mem_storage=True,
        filter_subject=f"$KV.{bucket}.>",
    )
    prefix = len(f"$KV.{bucket}.")
    out: dict[str, tuple[bytes, float]] = {}
    async for m in t.link.read(f"KV_{bucket}", cfg):
        if (m.headers or {}).get("KV-Operation"):
            continue  # deleted or purged
        out[m.subject[prefix:]] = (bytes(m.data or b""), m.metadata.timestamp.timestamp())
    return out


async def _partition(t: NatsTransport, p: int, now: float) -> dict[str, Any]:
    """One partition's row: its three priority lanes' durables summed (pending, ack pending, redelivered),
    the oldest pending event over them (:mod:`.lanes`)."""
    from nats.js.errors import NotFoundError

    s = t.settings
    row: dict[str, Any] = {"partition": p, "consumer": s.durable(p)}

    async def lane(ln: str) -> dict[str, Any] | None:
        try:
            ci = await t.link.jsm.consumer_info(s.stream, s.durable(p, ln))
        except NotFoundError:
            return None  # a lane durable not made yet (a stream set up before the lanes): nothing in it
        pending, acking = int(ci.num_pending or 0), int(ci.num_ack_pending or 0)
        out: dict[str, Any] = {"pending": pending, "ack_pending": acking, "redelivered": int(ci.num_redelivered or 0)}
        if pending + acking:
            floor = int(ci.ack_floor.stream_seq if ci.ack_floor else 0)
            try:
                raw = await t.link.jsm.get_msg(
                    s.stream, seq=floor + 1, subject=subjects.partition_filter(p, ln), next=True
                )
                hdrs = raw.headers or {}
                out["oldest"] = decode(raw.data or b"", hdrs.get("Poet-Id") or hdrs.get("Nats-Msg-Id") or "").timestamp
            except (NotFoundError, InvalidData):
                pass
        return out

    lanes = await asyncio.gather(*(lane(ln) for ln in subjects.LANES))
    if lanes[0] is None:
        return {**row, "missing": True}
    got = [x for x in lanes if x is not None]
    for k in ("pending", "ack_pending", "redelivered"):
        row[k] = sum(x[k] for x in got)
    oldest = [x["oldest"] for x in got if "oldest" in x]
    row["oldest_pending"] = min(oldest) if oldest else None
    return row


async def _gather(t: NatsTransport, now: float) -> dict[str, Any]:
    s = t.settings
    main, dead, corrupt = await asyncio.gather(
        _stream(t, s.stream), _stream(t, s.dead_stream), _stream(t, s.corrupt_stream)
    )
    parts = await asyncio.gather(*(_partition(t, p, now) for p in range(s.partitions)))
    leases = await lease_entries(t)
    return {"main": main, "dead": dead, "corrupt": corrupt, "parts": list(parts), "leases": leases}


def _messages(info: Any) -> int:
    return int(info.state.messages) if info is not None else 0


class NatsStatus:
    """A :class:`~poetctl.ops.status.StatusSource` over NATS; :attr:`info` keeps the NATS detail for ``status``."""

    def __init__(self, transport: NatsTransport) -> None:
        self.t = transport
        self.where = f"NATS {transport.settings.shown_servers()} stream {transport.settings.stream}"
        self.info: dict[str, Any] = {}
        self.stats: dict[str, dict[str, Any]] = {}

    def figures(self, now: float, stale_after: float, lease_seconds: float) -> dict[str, Any]:
        got = self.t.link.run(_gather(self.t, now), timeout=120)
        parts: list[dict[str, Any]] = got["parts"]
        leases: dict[str, tuple[bytes, float]] = got["leases"]
        owners = {
            k[1:]: v.decode("utf-8", "replace") for k, (v, _) in leases.items() if k[:1] == "p" and k[1:].isdigit()
        }
        self.stats = {}
        for k, (v, _) in leases.items():
            if k.startswith(STATS_PREFIX):
                try:
                    doc = json.loads(v)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    self.stats[k[len(STATS_PREFIX) :]] = doc
        pending = sum(r.get("pending", 0) for r in parts)
        inflight = sum(r.get("ack_pending", 0) for r in parts)
        dead, corrupt = _messages(got["dead"]), _messages(got["corrupt"])
        processed = max(0, _messages(got["main"]) - pending - inflight - dead)
        oldest = [r["oldest_pending"] for r in parts if r.get("oldest_pending") is not None]
        for r in parts:
            r["owner"] = owners.get(str(r["partition"]))
            o = r.pop("oldest_pending", None)
            r["lag_seconds"] = round(max(0.0, now - o), 3) if o is not None else None
        daemons = []
        for k, (_, at) in sorted(leases.items()):
            if not k.startswith(MEMBER_PREFIX):
                continue
            name = k[len(MEMBER_PREFIX) :]
            held = sorted(int(p) for p, o in owners.items() if o == name)
            st = self.stats.get(name) or {}
            daemons.append(
                {
                    "owner": name,
                    "host": st.get("host"),
                    "pid": st.get("pid"),
                    "alive": True,  # the bucket's TTL removes a daemon that stopped refreshing
                    "age_seconds": round(max(0.0, now - at), 3),
                    "last_beat": at,
                    "partitions": held,
                    "inflight": sum(r.get("ack_pending", 0) for r in parts if r["partition"] in held),
                    "lag_seconds": None,
                    "rate_per_second": float(st.get("rate_per_second") or 0.0),
                    "counts": st.get("counts") or {},
                }
            )
        main = got["main"]
        self.info = {
            "servers": self.t.settings.shown_servers(),
            "stream": {
                "name": self.t.settings.stream,
                "messages": _messages(main),
                "bytes": int(main.state.bytes) if main is not None else 0,
                "first_seq": int(main.state.first_seq) if main is not None else 0,
                "last_seq": int(main.state.last_seq) if main is not None else 0,
                "replicas": int(main.config.num_replicas or 1) if main is not None else None,
            },
            "dead_letters": dead,
            "corrupt": corrupt,
            "pending": pending,
            "ack_pending": inflight,
            "redelivered": sum(r.get("redelivered", 0) for r in parts),
            "partitions": parts,
        }
        return {
            "counts": {
                "pending": pending,
                "inflight": inflight,
                "processed": processed,
                "dead": dead,
                "corrupt": corrupt,
            },
            "processed_source": "stream",
            "oldest_pending": min(oldest) if oldest else None,
            "recent": None,
            "daemons": daemons,
        }


def nats_figures(t: NatsTransport, lease_seconds: float = 30.0, now: float | None = None) -> dict[str, Any]:
    """The ``status`` document over NATS, with its ``nats`` detail (what the metrics and ``top`` read)."""
    from ...ops.status import collect

    source = NatsStatus(t)
    doc = collect(source, lease_seconds=lease_seconds, now=now)
    doc["nats"] = source.info
    return doc


__all__ = ["MEMBER_PREFIX", "STATS_PREFIX", "NatsStatus", "lease_entries", "nats_figures"]
