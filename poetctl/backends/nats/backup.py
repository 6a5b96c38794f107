"""``poetctl backup`` / ``restore`` on NATS: the spool's archive format (fs/backup.py), exported through the API.

Not a stream snapshot (``nats stream backup``): a snapshot holds the raw
stream blocks, restores only onto a server of the same layout, and says
nothing about each event's state. An export in the spool's manifest format
holds each event once, in its state, with a checksum, so **one archive
restores into either backend**: a spool backup into an empty NATS stream,
and a NATS backup into a new spool.

Backup, consistent while daemons run (states only move forward): each
partition consumer's ack floor is read first, then the KV bucket
``POET_STATE`` (the newest entry of each id), then the stream, once, from its
first sequence. An event's state is its entry's when it has one (an entry
always wins; a dead letter's entry is written before its TERM moves the
floor, so reading the floors first never shows a dead letter as processed);
an event without an entry (the KV-less publishing path) is processed at or
below its partition's ack floor, else pending. A stream message is
immutable, so each event is archived once, in a state it really had
(in-flight events as pending, as on the spool). The stream is read twice up
to its last sequence when the walk began, headers only and then in pages,
each message written to the archive as it comes: memory holds each id's
brief state, never the stream. Members: ``events/<state>/<id>.json`` (the
stored bytes, the spool's file content), beside a dead event its
``events/dead/<id>.error`` (its KV entry's record, else its DLQ headers'),
``events/corrupt/<id>.json`` with its ``.reason``, and
``kv/functions/<key>`` (the function-state KV bucket: the spool's ``state/``
has no NATS equivalent file by file).

Restore (:mod:`.restore`) publishes an archive into an empty stream and
makes each partition's durable consumer again (:func:`_restart_consumers`).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from ...errors import InvalidData
from ...ids import is_event_id
from ...transport import State
from ..fs.archive import ERROR, ArchiveWriter
from ..memory import decode
from . import subjects
from .dead import _from_headers

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from .transport import NatsTransport

SUFFIX = ".json"
REASON = ".reason"
PAGE_BYTES = 2 << 20
RESTORED = "restored from a backup (the archive keeps no original error)"
_ARCHIVED = {State.PENDING: "pending", State.INFLIGHT: "pending", State.PROCESSED: "processed", State.DEAD: "dead"}


def _id_of(key: str) -> str | None:
    if key.startswith("e."):
        return key[2:]
    if key.startswith("h."):
        try:
            return bytes.fromhex(key[2:]).decode("utf-8", "surrogatepass")
        except ValueError:
            return None
    return None


async def _messages(
    t: NatsTransport, stream: str, first: int, last: int, headers_only: bool = False, page: int = 512
) -> AsyncIterator[Any]:
    """The messages of ``stream`` from sequence ``first`` to ``last``, in order, a page at a time."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, first),
        inactive_threshold=30.0,
        mem_storage=True,
        headers_only=headers_only or None,
    )
    async with aclosing(cast("AsyncGenerator[Any, None]", t.link.read(stream, cfg, page))) as msgs:
        async for m in msgs:
            if int(m.metadata.sequence.stream) > last:
                return  # published after the backup began: not in it (the walk has its end)
            yield m


async def _floors(t: NatsTransport) -> dict[int, int]:
    """Each partition consumer's ack floor (stream sequence): every message at or below it is finished."""
    from nats.js.errors import NotFoundError

    s = t.settings

    async def one(p: int) -> int:
        try:
            return int((await t.link.jsm.consumer_info(s.stream, s.durable(p))).ack_floor.stream_seq or 0)
        except NotFoundError:
            return 0

    return dict(enumerate(await asyncio.gather(*(one(p) for p in range(s.partitions)))))


def _partition(subject: str) -> int | None:
    tok = subject[len(subjects.EVENTS) + 1 :].partition(".")[0] if subject.startswith(subjects.EVENTS + ".") else ""
    return int(tok) if tok.isdigit() else None


async def _kv_entries(t: NatsTransport, bucket: str) -> AsyncIterator[tuple[str, bytes]]:
    """The newest live entry of every key of a KV bucket, one at a time."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=30.0,
        mem_storage=True,
        filter_subject=f"$KV.{bucket}.>",
    )
    prefix = len(f"$KV.{bucket}.")
    try:
        async with aclosing(cast("AsyncGenerator[Any, None]", t.link.read(f"KV_{bucket}", cfg))) as entries:
            async for m in entries:
                if m.data and not (m.headers or {}).get("KV-Operation"):
                    yield m.subject[prefix:], bytes(m.data)
    except NotFoundError:
        return


def _msg_id(m: Any) -> str:
    h = m.headers or {}
    return str(h.get("Poet-Id") or h.get("Nats-Msg-Id") or "")


class _Walk:
    """One consistent walk of the NATS backend into an archive (see the module docstring).

    Held in memory: per event its KV state in brief (state, sequence; a dead
    letter's record and a quarantined input's entry in full), and the newest
    sequence of each id without one; never a message body beyond the page
    being read.
    """

    def __init__(self, t: NatsTransport, w: ArchiveWriter, max_bytes: int) -> None:
        self.t, self.w, self.max_bytes = t, w, max_bytes
        self.entries: dict[str, tuple[str, int]] = {}  # id -> (archived state, its message's sequence)
        self.full: dict[str, dict[str, Any]] = {}  # dead and corrupt ids -> their whole entry

    async def run(self) -> None:
        t, s, w = self.t, self.t.settings, self.w
        # Order matters (states only move forward): the ack floors first, then the KV entries (a dead letter's
        # entry is written before its TERM moves the floor), then the stream. An entry always wins; an event
        # without one (derived state) is processed at or below its partition's floor, else pending.
        floors = await _floors(t)
        async for key, value in _kv_entries(t, s.state_bucket):  # a key changed during the read: newest wins
            eid = _id_of(key)
            if eid is None or not is_event_id(eid):
                w.skipped.append(f"{s.state_bucket} {key}: not an event id; left out")
                continue
            st = orjson.loads(value)
            state = str(st.get("s", "pending"))
            if state in (State.CORRUPT, State.DEAD):
                self.full[eid] = st
            else:
                self.full.pop(eid, None)
            if state != State.CORRUPT and "seq" in st:
                if str(st.get("stream", s.stream)) != s.stream:
                    w.skipped.append(f"{eid}: its message is in {st.get('stream')}, not {s.stream}; left out")
                    continue
                kept = _ARCHIVED.get(State(state)) if state in {x.value for x in State} else None
                if kept is None:
                    w.skipped.append(f"{eid}: unknown state {state!r} in {s.state_bucket}; left out")
                    continue
                self.entries[eid] = (kept, int(st["seq"]))
            else:
                self.entries.pop(eid, None)
        info = await t.link.jsm.stream_info(s.stream)
        first, last = int(info.state.first_seq or 1), int(info.state.last_seq or 0)
        newest: dict[str, int] = {}  # id without an entry -> its newest copy in the stream (headers only)
        if info.state.messages:
            async for m in _messages(t, s.stream, first, last, headers_only=True):
                eid = _msg_id(m)
                if eid and eid not in self.entries:
                    newest[eid] = int(m.metadata.sequence.stream)
            # A page of bodies is what the walk holds at once: about PAGE_BYTES, whatever the stream's size.
            page = max(1, min(512, PAGE_BYTES * int(info.state.messages) // max(1, int(info.state.bytes or 1))))
            async for m in _messages(t, s.stream, first, last, page=page):
                await self._event(m, newest, floors)
        for eid, (_, seq) in sorted(self.entries.items()):
            w.skipped.append(f"{eid}: message {s.stream}/{seq} is gone (pruned?); left out")
        for eid, st in sorted(self.full.items()):
            if st.get("s") == State.CORRUPT:
                await self._corrupt(eid, st)
        async for key, value in _kv_entries(t, s.function_bucket):
            w.add(f"kv/functions/{key}", value)

    async def _event(self, m: Any, newest: dict[str, int], floors: dict[int, int]) -> None:
        s, w = self.t.settings, self.w
        eid, seq = _msg_id(m), int(m.metadata.sequence.stream)
        entry = self.entries.get(eid)
        if entry is not None:
            if entry[1] != seq:
                return  # an older copy (a retry published it again): the entry names the one that counts
            del self.entries[eid]
            kept = entry[0]
        elif newest.get(eid) == seq:
            del newest[eid]
            p = _partition(m.subject)
            kept = "processed" if p is not None and seq <= floors.get(p, 0) else "pending"
        else:
            return
        data = bytes(m.data or b"")
        if len(data) > self.max_bytes:
            w.skipped.append(f"{s.stream}/{seq} ({eid}): over max_event_bytes; left out")
            return
        try:
            ev = decode(data, eid)
        except InvalidData as exc:
            w.skipped.append(f"{s.stream}/{seq} ({eid}): {exc.message}")
            return
        w.add(f"events/{kept}/{eid}{SUFFIX}", data, ev.timestamp)
        if kept == "dead":
            record = await self._dead_record(eid, self.full.pop(eid, {}))
            if record is not None:
                w.add(f"events/dead/{eid}{ERROR}", orjson.dumps(record, option=orjson.OPT_INDENT_2))

    async def _dead_record(self, eid: str, st: dict[str, Any]) -> dict[str, Any] | None:
        """A dead letter's record as the spool keeps it: its KV entry's, else read back from its DLQ headers."""
        from nats.js.errors import NotFoundError

        info = st.get("info")
        if isinstance(info, dict):
            return info
        if not st.get("dseq"):
            return None
        try:
            raw = await self.t.link.jsm.get_msg(
                str(st.get("dstream") or self.t.settings.dead_stream), seq=int(st["dseq"])
            )
        except NotFoundError:
            return None
        return {"id": eid, **_from_headers(dict(raw.headers or {}))}

    async def _corrupt(self, eid: str, st: dict[str, Any]) -> None:
        """Quarantined input: its body from the corrupt stream, and its reason line."""
        from nats.js.errors import NotFoundError

        from ...transport import quarantine_line

        stream = str(st.get("dstream") or st.get("stream") or self.t.settings.stream)
        seq = int(st.get("dseq") or st.get("seq") or 0)
        try:
            raw = await self.t.link.jsm.get_msg(stream, seq=seq)
        except NotFoundError:
            self.w.skipped.append(f"{eid}: quarantined input {stream}/{seq} is gone; left out")
            return
        self.w.add(f"events/corrupt/{eid}{SUFFIX}", bytes(raw.data or b""))
        self.w.add(f"events/corrupt/{eid}{SUFFIX}{REASON}", (quarantine_line(st.get("info")) + "\n").encode())


def write_backup(
    t: NatsTransport, dest: Path, *, max_bytes: int, version: str, since: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Archive the NATS backend of ``t`` into ``dest`` (created exclusively), streaming; return the manifest."""
    with ArchiveWriter(dest, since) as w:
        t.link.run(_Walk(t, w, max_bytes).run(), timeout=3600)
        return w.finish(version, origin(t))


# -- restore (restore.py; the consumers are made again here) -------------------------------------
async def _restart_consumers(t: NatsTransport, start: dict[int, int]) -> None:
    """Make each partition's durable consumers again (every priority lane's), delivering from ``start[p]``
    (its first pending event: restored events are all in the normal lane, and the high and low lanes'
    durables from there on find nothing older of theirs)."""
    from nats.js.errors import NotFoundError

    from .setup import consumer_config, lane_specs

    s = t.settings
    for p, _, spec in lane_specs(s):
        try:
            await t.link.jsm.delete_consumer(s.stream, spec["durable_name"])
        except NotFoundError:
            pass
        await t.link.jsm.add_consumer(s.stream, consumer_config(spec, start[p]))


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def origin(t: NatsTransport) -> dict[str, Any]:
    """What the manifest says about where the backup came from (no credentials)."""
    return {
        "backend": "nats",
        "spool": None,
        "nats": {"servers": t.settings.shown_servers(), "stream": t.settings.stream},
    }


__all__ = ["origin", "write_backup"]
