"""The dead letters on NATS: list, retry and purge the ``POET_DEAD`` stream (``poetctl dead`` in nats mode).

A dead letter is a message of the DLQ stream (body: the original event;
headers: Poet-Id, Poet-Reason, Poet-Error, Poet-Attempts, Poet-Handler,
Poet-Dead-At, Poet-Traceback) whose event's KV state says ``dead`` with
that message's sequence (``dseq``). The KV state carries the whole
description (:func:`~poetctl.transport.dead_letter_info`); the headers
stand in when the state has expired (the state bucket keeps ``max_age``,
the DLQ keeps letters until purged). A DLQ message whose event has moved on
(a retry that stopped half-way) is stale: not listed, not retried twice.

Retry publishes the event again, marked like the spool's retry
(``metadata.replayed``, the error's summary), to its partition's subject
with a fresh record, then deletes the letter and the old stream copy. It
keeps its id; its ``Nats-Msg-Id`` is ``<id>:d<dead sequence>``: not the id
itself, which the duplicate window would drop as a repeat of the first
publish, and the same for a retry run again after a crash (deduplicated).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidData
from ...event import Event
from ...transport import Query, State
from ..fs.replay import error_summary, mark_replayed
from ..memory import decode
from . import subjects
from .fastpub import header_value
from .subjects import kv_key
from .transport import NatsTransport, dumps


def unheader(value: str | None) -> str | None:
    """Undo :func:`~.fastpub.header_value` (a JSON-escaped line); a truncated one is kept as it is."""
    if value is None:
        return None
    try:
        out = json.loads(f'"{value}"')
    except ValueError:
        return value
    return out if isinstance(out, str) else value


def _number(value: str | None, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value) if value is not None else None
    except ValueError:
        return None


@dataclass(slots=True)
class Letter:
    """One dead letter: the event, its description, where it sits in the DLQ, and its KV state (if kept)."""

    event: Event
    info: dict[str, Any]
    dseq: int
    state: dict[str, Any] | None

    def row(self) -> dict[str, Any]:
        """The ``dead list`` row (the same fields as the spool's)."""
        ev, err = self.event, self.info
        return {
            "id": ev.id,
            "type": ev.type,
            "topic": ev.topic,
            "timestamp": ev.timestamp,
            "correlation_id": ev.correlation_id,
            "reason": err.get("reason"),
            "attempts": err.get("attempts"),
            "error": err.get("error"),
            "handler": err.get("handler"),
            "dead_at": err.get("dead_at"),
        }


def to_headers(event_id: str, seq: int, reason: str, info: dict[str, Any], attempts: int, now: float) -> dict[str, str]:
    """A dead letter's headers (what :func:`_from_headers` reads back): why, how often, where from."""
    return {
        "Nats-Msg-Id": f"{event_id}:{seq}",
        "Poet-Id": event_id,
        "Poet-Reason": header_value(reason, 200),
        "Poet-Error": header_value(str(info.get("error") or reason)),
        "Poet-Attempts": str(info.get("attempts", attempts)),
        "Poet-Traceback": header_value(info.get("traceback")),
        "Poet-Handler": header_value(info.get("handler"), 400),
        "Poet-Dead-At": str(info.get("dead_at", now)),
        "Poet-Seq": str(seq),
    }


def _from_headers(h: dict[str, str]) -> dict[str, Any]:
    return {
        "reason": unheader(h.get("Poet-Reason")),
        "error": unheader(h.get("Poet-Error")),
        "handler": unheader(h.get("Poet-Handler")),
        "attempts": _number(h.get("Poet-Attempts"), int),
        "dead_at": _number(h.get("Poet-Dead-At"), float),
        "traceback": unheader(h.get("Poet-Traceback")),
    }


def letters(t: NatsTransport, sel: Query | None = None, warn: Any = None) -> list[Letter]:
    """The current dead letters matching ``sel`` (stream order); undecodable messages are warned about."""
    return t.link.run(_letters(t, sel, warn), timeout=600)


async def _letters(t: NatsTransport, sel: Query | None, warn: Any) -> list[Letter]:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    s = t.settings
    info = await t.link.jsm.stream_info(s.dead_stream)
    if info.state.messages == 0:
        return []
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0, mem_storage=True
    )
    found: list[tuple[int, Event, dict[str, str]]] = []
    async for m in t.link.read(s.dead_stream, cfg):
        hdrs = dict(m.headers or {})
        seq = int(m.metadata.sequence.stream)
        eid = hdrs.get("Poet-Id") or ""
        try:
            ev = decode(m.data or b"", eid)
        except InvalidData as exc:
            if warn is not None:
                warn(f"{s.dead_stream} message {seq}: {exc.message}; skipped")
            continue
        if sel is None or sel.match(ev):
            found.append((seq, ev, hdrs))
    states = await asyncio.gather(*(t._state(ev.id) for _, ev, _ in found))
    out: list[Letter] = []
    for (seq, ev, hdrs), st in zip(found, states, strict=True):
        if st is not None and (st.get("s") != State.DEAD or int(st.get("dseq") or -1) != seq):
            continue  # stale: the event was retried (or dead-lettered again) since
        info_ = (st or {}).get("info")
        out.append(Letter(ev, dict(info_) if isinstance(info_, dict) else _from_headers(hdrs), seq, st))
    return out


def retry(t: NatsTransport, found: list[Letter], now: float, max_bytes: int, warn: Any) -> list[str]:
    """Put ``found`` back on their partitions with fresh records; the ids retried (in order)."""

    async def one(letter: Letter) -> str:
        from nats.js.errors import NotFoundError

        s = t.settings
        ev = Event.from_dict(letter.event.to_dict())
        marked = mark_replayed(ev, "dead", now, error_summary(letter.info))
        data = marked.to_json() + b"\n"
        if len(data) > max_bytes:
            warn(f"{ev.id}: the replay mark would exceed max_event_bytes; retrying it unmarked")
            marked, data = letter.event, letter.event.to_json() + b"\n"
        key = t.key_of(marked)
        part = subjects.partition_of(key, s.partitions)
        hdrs = {"Nats-Msg-Id": f"{ev.id}:d{letter.dseq}", "Poet-Id": ev.id, "Poet-Key": subjects.key_hash(key)}
        subj = subjects.event_subject(marked.topic, part, subjects.lane_of(marked.priority), hdrs["Poet-Key"])
        ack = await t.link.js.publish(subj, data, headers=hdrs)
        st = {"s": State.PENDING.value, "seq": ack.seq, "p": part, "ts": marked.timestamp}
        await t.state_kv.put(kv_key(ev.id), dumps(st))
        old = (letter.state or {}).get("seq")
        for stream, seq in ((s.stream, old), (s.dead_stream, letter.dseq)):
            if seq and not (stream == s.stream and int(seq) == ack.seq):
                try:
                    await t.link.jsm.delete_msg(stream, int(seq))
                except NotFoundError:
                    pass
        return ev.id

    async def go() -> list[str]:
        return list(await asyncio.gather(*(one(x) for x in found)))

    ids = t.link.run(go(), timeout=600)
    for c in list(t._consumers):
        c.interrupt()
    return ids


def purge(t: NatsTransport, found: list[Letter]) -> list[str]:
    """Delete ``found`` for good: the letter, the event's stream copy and its KV state; the ids purged."""

    async def one(letter: Letter) -> str:
        from nats.js.errors import NotFoundError

        s = t.settings
        old = (letter.state or {}).get("seq")
        for stream, seq in ((s.dead_stream, letter.dseq), (s.stream, old)):
            if seq:
                try:
                    await t.link.jsm.delete_msg(stream, int(seq))
                except NotFoundError:
                    pass
        if letter.state is not None:
            await t.state_kv.purge(kv_key(letter.event.id))
        return letter.event.id

    async def go() -> list[str]:
        return list(await asyncio.gather(*(one(x) for x in found)))

    return t.link.run(go(), timeout=600)


__all__ = ["Letter", "letters", "purge", "retry", "unheader"]
