"""Reading the event stream for the commands: ``tail`` (and ``-f``), ``replay``, ``correlate``.

Functions taking a connected :class:`~.transport.NatsTransport` (kept out of
the transport, whose hot paths live elsewhere). Everything here reads with
ephemeral, unacknowledged pull consumers (``AckPolicy.NONE``, memory storage,
removed when done or after 30 s idle), filtered by the subjects a topic
pattern maps to (:func:`~.subjects.pattern_filters`), then checked with the
same matcher as the spool.

An event's *state* is its KV entry in ``POET_STATE``; a stream message whose
entry names another sequence is a stale copy (left by a replay or dead-letter
retry that stopped half-way) and is skipped, so each event shows once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ...errors import InvalidData
from ...event import Event
from ...transport import Query, State
from ..memory import decode
from . import derive, subjects
from .subjects import kv_key
from .transport import NatsTransport, dumps

WINDOW = 512  # messages read per step when looking backwards for the newest N


@dataclass(slots=True)
class Seen:
    """An event read from the stream, with its state and where it sits (``poetctl.query.Found``'s shape)."""

    timestamp: float
    id: str
    state: str
    path: PurePosixPath  # <stream>/<sequence>: where this copy is (no file: shown in messages only)
    event: Event
    raw: bytes
    seq: int
    entry: dict[str, Any] | None
    revision: int | None


def filters_for(query: Query) -> list[str] | None:
    """The filter subjects of ``query``'s topics (None: every event; []: nothing can match)."""
    if not query.topics:
        return None
    return sorted({f for t in query.topics for f in subjects.pattern_filters(t)})


def _config(filters: list[str] | None, *, start_seq: int | None = None, since: float | None = None) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0, mem_storage=True
    )
    if start_seq is not None:
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = max(1, start_seq)
    elif since is not None:
        # The stream's own time is when the message was stored; an event is stamped before that
        # (a hybrid backlog, a retry): start a margin early and let the query check event time.
        cfg.deliver_policy = DeliverPolicy.BY_START_TIME
        cfg.opt_start_time = datetime.datetime.fromtimestamp(max(0.0, since - 300), tz=datetime.UTC)
    if filters and len(filters) > 1:
        cfg.filter_subjects = filters
    elif filters:
        cfg.filter_subject = filters[0]
    return cfg


async def _messages(t: NatsTransport, stream: str, cfg: Any, stop_seq: int | None = None) -> AsyncIterator[Any]:
    """The messages an ephemeral consumer with ``cfg`` delivers, up to ``stop_seq`` (or the end when made)."""
    gen: Any = t.link.read(stream, cfg)
    try:
        async for m in gen:
            if stop_seq is not None and m.metadata.sequence.stream > stop_seq:
                return
            yield m
    finally:
        await gen.aclose()  # now, not at garbage collection: it deletes the ephemeral consumer


def _decode(m: Any) -> Event | None:
    hdrs = m.headers or {}
    eid = hdrs.get("Poet-Id") or hdrs.get("Nats-Msg-Id") or ""
    try:
        return decode(m.data or b"", eid)
    except InvalidData:
        return None


async def entries(t: NatsTransport, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], int]]:
    """The KV state entries (value, revision) of ``ids``; absent ids are left out."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    async def one(eid: str) -> tuple[str, tuple[dict[str, Any], int] | None]:
        try:
            e = await t.state_kv.get(kv_key(eid))
        except (KeyNotFoundError, KeyDeletedError):
            return eid, None
        if not e.value:
            return eid, None
        return eid, (json.loads(e.value), int(e.revision or 0))

    got = await asyncio.gather(*(one(i) for i in dict.fromkeys(ids)))
    return {i: v for i, v in got if v is not None}


async def _resolve(t: NatsTransport, found: list[tuple[int, Any, Event]]) -> list[Seen]:
    """Attach each event's state; drop stale copies (one id: the newest copy only).

    A copy newer than the sequence its state names is pending: a replay or
    retry that has published and not yet written the state. A copy without
    an entry has its state derived from its partition consumer (:mod:`.derive`;
    revision 0: a replay creates the entry).
    """
    known = await entries(t, [ev.id for _, _, ev in found])
    fl = await derive.floors(t) if any(ev.id not in known for _, _, ev in found) else {}
    local = t._local_states()
    best: dict[str, Seen] = {}
    for seq, m, ev in found:
        st, rev = known.get(ev.id, (None, 0))
        if st is not None:
            state = str(st["s"])
        else:
            state = derive.derived(seq, derive.lane_of_subject(m.subject), fl, local.get(ev.id)).value
        if st is not None and "seq" in st and st.get("stream", t.settings.stream) == t.settings.stream:
            if int(st["seq"]) > seq:
                continue  # a stale copy: the event lives on at a later sequence
            if int(st["seq"]) < seq:
                state = State.PENDING.value
        prev = best.get(ev.id)
        if prev is None or prev.seq < seq:
            path = PurePosixPath(t.settings.stream, str(seq))
            best[ev.id] = Seen(ev.timestamp, ev.id, state, path, ev, bytes(m.data or b""), seq, st, rev)
    return list(best.values())


async def _bounds(t: NatsTransport) -> tuple[int, int]:
    info = await t.link.jsm.stream_info(t.settings.stream)
    return int(info.state.first_seq or 0), int(info.state.last_seq or 0)


def last_seq(t: NatsTransport) -> int:
    """The stream's last sequence now (what ``tail -f`` follows from)."""
    return t.link.run(_bounds(t))[1]


def newest(t: NatsTransport, query: Query, states: Sequence[str], limit: int | None = None) -> list[Seen]:
    """The newest ``limit`` events (all without a limit) matching ``query`` in ``states``, newest first.

    Reads backwards in growing windows of the stream, so ``tail -n 10`` on a
    large stream reads about the last few hundred messages, not all of them.
    """
    wanted = set(states)

    async def go() -> list[Seen]:
        filters = filters_for(query)
        if filters == []:
            return []
        first, last = await _bounds(t)
        if last == 0 or last < first:
            return []
        out: list[Seen] = []

        async def read(cfg: Any, stop: int) -> list[Seen]:
            found: list[tuple[int, Any, Event]] = []
            async for m in _messages(t, t.settings.stream, cfg, stop):
                ev = _decode(m)
                if ev is not None and query.match(ev):
                    found.append((int(m.metadata.sequence.stream), m, ev))
            return [s for s in await _resolve(t, found) if s.state in wanted]

        if limit is None or query.since is not None:
            out = await read(_config(filters, since=query.since, start_seq=None if query.since else first), last)
        else:
            stop, window = last, WINDOW
            while stop >= first and len(out) < limit:
                start = max(first, stop - window + 1)
                out += await read(_config(filters, start_seq=start), stop)
                stop, window = start - 1, window * 4
        out.sort(key=lambda s: (s.timestamp, s.seq), reverse=True)
        return out[:limit] if limit is not None else out

    return t.link.run(go(), timeout=600)


def lookup(t: NatsTransport, ids: Sequence[str]) -> dict[str, Seen]:
    """The current copy of each id (by its KV entry's sequence); missing ids are left out."""

    async def go() -> dict[str, Seen]:
        from nats.js.errors import NotFoundError

        known = await entries(t, ids)
        out: dict[str, Seen] = {}
        for eid, (st, rev) in known.items():
            if "seq" not in st:
                continue
            stream = str(st.get("stream", t.settings.stream))
            try:
                raw = await t.link.jsm.get_msg(stream, seq=int(st["seq"]))
            except NotFoundError:
                continue
            try:
                ev = decode(raw.data or b"", eid)
            except InvalidData:
                continue
            seq = int(st["seq"])
            path = PurePosixPath(stream, str(seq))
            out[eid] = Seen(ev.timestamp, eid, str(st["s"]), path, ev, bytes(raw.data or b""), seq, st, rev)
        for eid in dict.fromkeys(ids):  # no entry: found in the stream, state derived (:mod:`.derive`)
            if eid in known:
                continue
            st_, found = await t._lookup(eid)
            if st_ is None or found is None:
                continue
            seq = int(st_["seq"])
            raw_ = found.to_json() + b"\n"
            path = PurePosixPath(t.settings.stream, str(seq))
            out[eid] = Seen(found.timestamp, eid, str(st_["s"]), path, found, raw_, seq, None, 0)
        return out

    return t.link.run(go(), timeout=120)


class Cursor:
    """New messages of the stream after a sequence, as they arrive (``tail -f``): an ephemeral consumer."""

    def __init__(self, t: NatsTransport, query: Query, after: int) -> None:
        self.t = t
        self.query = query
        self.sub: Any = None
        self.name: str | None = None
        self.filters = filters_for(query)
        if self.filters != []:
            self.sub, self.name = t.link.run(self._open(after + 1))

    async def _open(self, start: int) -> tuple[Any, str]:
        cfg = _config(self.filters, start_seq=start)
        ci = await self.t.link.jsm.add_consumer(self.t.settings.stream, cfg)
        sub = await self.t.link.js.pull_subscribe_bind(ci.name, self.t.settings.stream)
        return sub, ci.name

    def poll(self, wait: float) -> list[Seen]:
        """What arrived (matching the query), waiting up to ``wait`` seconds for the first message."""
        if self.sub is None:
            return []

        async def go() -> list[Seen]:
            try:
                msgs = await self.sub.fetch(256, timeout=max(0.05, wait))
            except TimeoutError:
                return []
            found = []
            for m in msgs:
                ev = _decode(m)
                if ev is not None and self.query.match(ev):
                    found.append((int(m.metadata.sequence.stream), m, ev))
            return await _resolve(self.t, found)

        return self.t.link.run(go(), timeout=wait + 60)

    def close(self) -> None:
        if self.sub is None:
            return
        sub, name, self.sub = self.sub, self.name, None

        async def go() -> None:
            try:
                await sub.unsubscribe()
                await self.t.link.jsm.delete_consumer(self.t.settings.stream, name)
            except Exception:  # an ephemeral consumer goes away by itself after its inactive_threshold
                pass

        try:
            self.t.link.run(go(), timeout=10)
        except Exception:  # closing is best effort (the server may be gone)
            pass


def states_of(t: NatsTransport, ids: Sequence[str]) -> dict[str, str]:
    """The KV state of each id that has one."""
    return {i: str(st["s"]) for i, (st, _) in t.link.run(entries(t, ids)).items()}


# -- replay --------------------------------------------------------------------------------------


def requeue(
    t: NatsTransport,
    found: Sequence[Seen],
    source: str,
    now: float,
    max_bytes: int,
    warn: Callable[[str], None],
) -> tuple[list[str], list[tuple[str, str]]]:
    """Publish ``found`` (processed or dead) again so every handler runs once more; (moved ids, skipped).

    Like the spool's replay: the id is kept, ``metadata.replayed`` gets
    ``{at, count, from}`` (from dead: the error's summary too), and the record
    starts fresh. ``Nats-Msg-Id`` is ``<id>:r<old sequence>`` (from dead:
    ``<id>:d<dead-letter sequence>``, as ``dead retry``): a new id for the
    duplicate window, yet the same when a replay that stopped half-way is run
    again, which the server then drops. The state entry is updated only if
    nothing wrote it since it was read (a daemon fast enough to handle the new
    copy first wrote a newer state); then the old copy (and dead letter) go.
    """
    from ..fs.replay import error_summary, mark_replayed

    async def one(s: Seen) -> tuple[str, str | None]:
        from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

        st = s.entry or {}
        if s.state != source or s.revision is None:
            return s.id, f"it is {s.state}, not {source}"
        info = st.get("info") if isinstance(st.get("info"), dict) else None
        ev = Event.from_dict(s.event.to_dict())
        marked = mark_replayed(ev, source, now, error_summary(info) if source == "dead" and info else None)
        data = marked.to_json() + b"\n"
        if len(data) > max_bytes:
            warn(f"{s.id}: the replay mark would exceed max_event_bytes; replaying it unmarked")
            marked, data = s.event, s.event.to_json() + b"\n"
        key = t.key_of(marked)
        part = subjects.partition_of(key, t.settings.partitions)
        dseq = st.get("dseq")
        msg_id = f"{s.id}:d{dseq}" if source == "dead" and dseq else f"{s.id}:r{s.seq}"
        hdrs = {"Nats-Msg-Id": msg_id, "Poet-Id": s.id, "Poet-Key": subjects.key_hash(key)}
        subj = subjects.event_subject(marked.topic, part, subjects.lane_of(marked.priority), hdrs["Poet-Key"])
        ack = await t.link.js.publish(subj, data, headers=hdrs)
        new = {"s": State.PENDING.value, "seq": ack.seq, "p": part, "ts": marked.timestamp}
        try:
            await t.state_kv.update(kv_key(s.id), dumps(new), last=s.revision)
        except KeyWrongLastSequenceError:
            pass  # a daemon has handled the new copy already: its state is the newer one
        for stream, seq in ((t.settings.stream, s.seq), (st.get("dstream"), dseq)):
            if stream and seq and not (stream == t.settings.stream and int(seq) == ack.seq):
                try:
                    await t.link.jsm.delete_msg(str(stream), int(seq))
                except NotFoundError:
                    pass
        return s.id, None

    async def go() -> list[tuple[str, str | None]]:
        return list(await asyncio.gather(*(one(s) for s in found)))

    results = t.link.run(go(), timeout=600)
    return [i for i, why in results if why is None], [(i, why) for i, why in results if why is not None]


# -- correlate -----------------------------------------------------------------------------------


def everything(t: NatsTransport) -> dict[str, Seen]:
    """Every event of the stream with a state, by id (``correlate`` builds its forest from these)."""
    return {s.id: s for s in reversed(newest(t, Query(), ("pending", "inflight", "processed", "dead")))}


__all__ = [
    "Cursor",
    "Seen",
    "entries",
    "everything",
    "filters_for",
    "last_seq",
    "lookup",
    "newest",
    "requeue",
    "states_of",
]
