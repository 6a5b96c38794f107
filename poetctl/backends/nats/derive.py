"""The state of an event that has no KV entry, derived from its partition consumer's sequences.

Most events never get a ``POET_STATE`` entry: a fresh (unkeyed) event is
published alone, and a consumer that acks it in stream order writes no
completion entry either (one JetStream write per event instead of three).
Their state is what the partition's durable consumer says about their
stream sequence ``seq``:

* ``seq <= ack floor``: processed (acked, or TERMed: dead letters and
  quarantines always write an entry, which wins);
* ``seq <= delivered`` (or leased in this process): inflight, a daemon holds it;
* otherwise pending.

An entry is written whenever this would be wrong: keyed ids (checked before
publishing), begun records that reached the server, failures, dead letters,
quarantines, releases, and acks that land above a message still outstanding
in their partition (the floor does not cover them yet). An entry always wins.

Finding a KV-less event by id reads the stream from the id's UUIDv7 time
(minus :data:`SKEW` for clocks that differ between machines) onwards.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from ...errors import InvalidData
from ...event import Event
from ...transport import State
from ..memory import decode
from . import subjects

if TYPE_CHECKING:
    from .transport import NatsTransport

SKEW = 600.0  # seconds an id's clock may run ahead of the server's when looking it up by time
# lane token ("<n>", "<n>h", "<n>l": :func:`.subjects.lane_token`) -> (ack floor, delivered) stream sequences
Floors = dict[str, tuple[int, int]]


def lane_of_subject(subject: str) -> str | None:
    """The lane token ``<n><lane>`` of ``poet.p.<n><lane>.<tail>`` (whose durable decides its state); None else."""
    return subjects.lane_token(subject)


async def floors(t: NatsTransport) -> Floors:
    """Every lane durable's (ack floor, delivered) stream sequences; (0, 0) where it does not exist.

    Each priority lane has its own durable (:mod:`.lanes`), so a message's state comes from the floor
    of its own lane's durable.
    """
    from nats.js.errors import NotFoundError

    from .setup import lane_specs

    s = t.settings
    specs = lane_specs(s)

    async def one(name: str) -> tuple[int, int]:
        try:
            ci = await t.link.jsm.consumer_info(s.stream, name)
        except NotFoundError:
            return (0, 0)
        return (int(ci.ack_floor.stream_seq or 0), int(ci.delivered.stream_seq or 0))

    got = await asyncio.gather(*(one(spec["durable_name"]) for _, _, spec in specs))
    return {f"{p}{lane}": v for (p, lane, _), v in zip(specs, got, strict=True)}


def derived(seq: int, where: str | None, fl: Floors, here: State | None = None) -> State:
    """The state of the event at ``seq`` of lane ``where`` (:func:`lane_of_subject`); ``here``: what this
    process's consumers know of it (leased: inflight; pulled and not handed out yet: pending)."""
    floor, delivered = fl.get(where, (0, 0)) if where is not None else (0, 0)
    if seq <= floor:
        return State.PROCESSED
    if here is not None:
        return here
    if seq <= delivered:
        return State.INFLIGHT
    return State.PENDING


def id_time(event_id: str) -> float | None:
    """The Unix time a UUIDv7 id was made at (its first 48 bits, ms); None for other ids."""
    h = event_id.replace("-", "")
    if len(h) != 32 or h[12] != "7":
        return None
    try:
        return int(h[:12], 16) / 1000.0
    except ValueError:
        return None


async def locate(t: NatsTransport, event_id: str) -> tuple[int, str | None, Event | None] | None:
    """The newest stream copy of ``event_id``: (sequence, lane token, event or None if unreadable)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=30.0,
        mem_storage=True,
        filter_subject=subjects.EVENTS + ".>",
    )
    at = id_time(event_id)
    if at is not None:
        cfg.deliver_policy = DeliverPolicy.BY_START_TIME
        cfg.opt_start_time = datetime.datetime.fromtimestamp(max(0.0, at - SKEW), tz=datetime.UTC)
    info = await t.link.jsm.stream_info(t.settings.stream)
    if not info.state.messages:
        return None
    found: tuple[int, str | None, Event | None] | None = None
    async for m in t.link.read(t.settings.stream, cfg):
        hdrs = m.headers or {}
        if (hdrs.get("Poet-Id") or hdrs.get("Nats-Msg-Id")) != event_id:
            continue
        try:
            ev: Event | None = decode(m.data or b"", event_id)
        except InvalidData:
            ev = None
        found = (int(m.metadata.sequence.stream), lane_of_subject(m.subject), ev)
    return found


async def stream_ids(t: NatsTransport) -> list[tuple[int, str | None, str]]:
    """(sequence, lane token, id) of every event message in the stream (headers only: no bodies)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    info = await t.link.jsm.stream_info(t.settings.stream)
    if not info.state.messages:
        return []
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=30.0,
        mem_storage=True,
        headers_only=True,
        filter_subject=subjects.EVENTS + ".>",
    )
    out: list[tuple[int, str | None, str]] = []
    async for m in t.link.read(t.settings.stream, cfg):
        hdrs: Any = m.headers or {}
        eid = hdrs.get("Poet-Id") or hdrs.get("Nats-Msg-Id") or ""
        out.append((int(m.metadata.sequence.stream), lane_of_subject(m.subject), eid))
    return out


async def ids_since(t: NatsTransport, since: float) -> set[str]:
    """Ids of the event messages the stream stored at or after ``since`` (Unix time; headers only)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    info = await t.link.jsm.stream_info(t.settings.stream)
    if not info.state.messages:
        return set()
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.datetime.fromtimestamp(max(0.0, since), tz=datetime.UTC),
        inactive_threshold=30.0,
        mem_storage=True,
        headers_only=True,
        filter_subject=subjects.EVENTS + ".>",
    )
    out: set[str] = set()
    async for m in t.link.read(t.settings.stream, cfg):
        hdrs: Any = m.headers or {}
        eid = hdrs.get("Poet-Id") or hdrs.get("Nats-Msg-Id")
        if eid:
            out.add(eid)
    return out


__all__ = [
    "SKEW",
    "Floors",
    "derived",
    "floors",
    "id_time",
    "ids_since",
    "lane_of_subject",
    "locate",
    "stream_ids",
]
