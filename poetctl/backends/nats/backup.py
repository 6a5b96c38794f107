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
(in-flight events as pending, as on the spool). Members:
``events/<state>/<id>.json`` (the stored bytes, the spool's file content),
``events/corrupt/<id>.json`` with its ``.reason``, and
``kv/functions/<key>`` (the function-state KV bucket: the spool's ``state/``
has no NATS equivalent file by file).

Restore, into an empty stream (no event, no state entry): events are
published in two passes, the processed and dead ones first, then the pending
ones, each pass in id order (the order the spool hands a key out in); each partition's durable consumer is then
made again starting at its first pending event, so finished events are
never handed to a handler again and each key's pending events keep their
order. Dead events go to the dead-letter stream too (the archive has no
original error: the spool's backup keeps none). Run it with no daemon
attached (the consumers are replaced).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import InvalidData, UsageError
from ...ids import is_event_id
from ...transport import Record, State, dead_letter_info
from ..fs.backup import Snapshot
from ..memory import decode
from . import subjects
from .subjects import kv_key
from .transport import dumps

if TYPE_CHECKING:
    from .transport import NatsTransport

SUFFIX = ".json"
REASON = ".reason"
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


async def _messages(t: NatsTransport, stream: str, first: int, subject: str | None = None) -> dict[int, Any]:
    """Every message of ``stream`` from sequence ``first`` on (``subject``: a filter): sequence -> message."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, first),
        inactive_threshold=30.0,
        mem_storage=True,
    )
    if subject is not None:
        cfg.filter_subject = subject
    return {int(m.metadata.sequence.stream): m async for m in t.link.read(stream, cfg)}


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


async def _kv_entries(t: NatsTransport, bucket: str) -> list[tuple[str, bytes]]:
    """The newest live entry of every key of a KV bucket."""
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
    out = []
    try:
        async for m in t.link.read(f"KV_{bucket}", cfg):
            if m.data and not (m.headers or {}).get("KV-Operation"):
                out.append((m.subject[prefix:], bytes(m.data)))
    except NotFoundError:
        return []
    return out


def snapshot(t: NatsTransport, max_bytes: int) -> Snapshot:
    """One consistent walk of the NATS backend (see the module docstring)."""

    async def go() -> Snapshot:
        s = t.settings
        snap = Snapshot()
        # Order matters (states only move forward): the ack floors first, then the KV entries (a dead letter's
        # entry is written before its TERM moves the floor), then the stream. An entry always wins; an event
        # without one (derived state) is processed at or below its partition's floor, else pending.
        floors = await _floors(t)
        entries: dict[str, dict[str, Any]] = {}
        for key, value in await _kv_entries(t, s.state_bucket):  # a key changed during the read: newest wins
            eid = _id_of(key)
            if eid is None or not is_event_id(eid):
                snap.skipped.append(f"{s.state_bucket} {key}: not an event id; left out")
            else:
                entries[eid] = orjson.loads(value)
        info = await t.link.jsm.stream_info(s.stream)
        msgs = await _messages(t, s.stream, int(info.state.first_seq or 1)) if info.state.messages else {}
        newest: dict[str, int] = {}  # id -> its newest copy in the stream
        for seq, m in msgs.items():
            eid = (m.headers or {}).get("Poet-Id") or (m.headers or {}).get("Nats-Msg-Id") or ""
            if eid and seq > newest.get(eid, 0):
                newest[eid] = seq
        for eid in sorted(set(newest) | set(entries)):
            st = entries.get(eid)
            if st is not None and st.get("s") == State.CORRUPT:
                await _corrupt(t, snap, eid, st)
                continue
            if st is not None and "seq" in st:
                stream, seq, state = str(st.get("stream", s.stream)), int(st["seq"]), State(st.get("s", "pending"))
            elif eid in newest:
                seq = newest[eid]
                stream, p = s.stream, _partition(msgs[seq].subject)
                state = State.PROCESSED if p is not None and seq <= floors.get(p, 0) else State.PENDING
            else:
                continue
            m = msgs.get(seq) if stream == s.stream else None
            if m is None:
                snap.skipped.append(f"{eid}: message {stream}/{seq} is gone (pruned?); left out")
                continue
            data = bytes(m.data or b"")
            if len(data) > max_bytes:
                snap.skipped.append(f"{stream}/{seq} ({eid}): over max_event_bytes; left out")
                continue
            try:
                ev = decode(data, eid)
            except InvalidData as exc:
                snap.skipped.append(f"{stream}/{seq} ({eid}): {exc.message}")
                continue
            kept = _ARCHIVED[state]
            snap.events[eid] = (kept, ev.timestamp)
            snap.members[f"events/{kept}/{eid}{SUFFIX}"] = data
        for key, value in await _kv_entries(t, s.function_bucket):
            snap.members[f"kv/functions/{key}"] = value
        return snap

    return t.link.run(go(), timeout=3600)


async def _corrupt(t: NatsTransport, snap: Snapshot, eid: str, st: dict[str, Any]) -> None:
    """Quarantined input: its body from the corrupt stream, and its reason line."""
    from nats.js.errors import NotFoundError

    from ...transport import quarantine_line

    stream = str(st.get("dstream") or st.get("stream") or t.settings.stream)
    seq = int(st.get("dseq") or st.get("seq") or 0)
    try:
        raw = await t.link.jsm.get_msg(stream, seq=seq)
    except NotFoundError:
        snap.skipped.append(f"{eid}: quarantined input {stream}/{seq} is gone; left out")
        return
    snap.members[f"events/corrupt/{eid}{SUFFIX}"] = bytes(raw.data or b"")
    snap.members[f"events/corrupt/{eid}{SUFFIX}{REASON}"] = (quarantine_line(st.get("info")) + "\n").encode()


# -- restore ------------------------------------------------------------------------------------
async def _is_empty(t: NatsTransport) -> str | None:
    """Why the target is not empty, or None."""
    s = t.settings
    for stream in (s.stream, s.dead_stream, s.corrupt_stream, f"KV_{s.state_bucket}"):
        info = await t.link.jsm.stream_info(stream)
        if info.state.messages:
            return f"stream {stream} holds {info.state.messages} message(s)"
    return None


def restore(t: NatsTransport, members: dict[str, bytes], until: float | None) -> dict[str, int]:
    """Publish ``members`` (verified, merged archives) into the empty backend of ``t``; counts per state."""
    s = t.settings
    events: list[tuple[int, float, str, str, Any, bytes]] = []  # (pass, timestamp, id, state, event, bytes)
    corrupt: list[tuple[str, bytes, str]] = []
    functions: list[tuple[str, bytes]] = []
    counts: dict[str, int] = {}
    for name, data in sorted(members.items()):
        parts = name.split("/")
        if parts[0] == "events" and parts[1] != "corrupt":
            eid = parts[2][: -len(SUFFIX)]
            ev = decode(data, eid)
            if until is not None and ev.timestamp > until:
                continue
            events.append((1 if parts[1] == "pending" else 0, ev.timestamp, eid, parts[1], ev, data))
            counts[parts[1]] = counts.get(parts[1], 0) + 1
        elif parts[0] == "events":
            if not name.endswith(REASON):
                reason = members.get(name + REASON, b"").decode("utf-8", "replace").strip()
                base = parts[2][: -len(SUFFIX)] if parts[2].endswith(SUFFIX) else parts[2]  # the spool's own names
                corrupt.append((base, data, reason or "restored from a backup"))
        elif until is not None:
            continue  # handler state describes the end of the backup, not TIME (as on the spool)
        elif parts[0] == "kv":
            functions.append((parts[2], data))
        else:  # the spool's state/ and feedback/ files: no NATS equivalent, file by file
            counts["skipped_state_files"] = counts.get("skipped_state_files", 0) + 1
    events.sort(key=lambda e: (e[0], e[2]))  # finished first, then pending in id order (the spool's key order)

    async def go() -> None:
        why = await _is_empty(t)
        if why is not None:
            raise UsageError(f"the NATS target is not empty ({why}); restore only into an empty stream")
        js = t.link.js
        now = t.clock()
        first_pending: dict[int, int] = {}
        for batch in _chunks(events, 256):
            acks = await asyncio.gather(
                *(
                    js.publish(
                        subjects.event_subject(ev.topic, subjects.partition_of(t.key_of(ev), s.partitions)),
                        data,
                        headers={"Nats-Msg-Id": eid, "Poet-Id": eid},
                    )
                    for _, _, eid, _, ev, data in batch
                )
            )
            puts = []
            for (_, _, eid, state, ev, data), ack in zip(batch, acks, strict=True):
                part = subjects.partition_of(t.key_of(ev), s.partitions)
                st: dict[str, Any] = {"s": state, "seq": ack.seq, "p": part, "ts": ev.timestamp}
                if state == "pending":
                    first_pending.setdefault(part, ack.seq)
                elif state == "dead":
                    reason = "restored from a backup (the archive keeps no original error)"
                    info = dead_letter_info(eid, reason, Record(), now)
                    hdrs = {"Nats-Msg-Id": f"{eid}:{ack.seq}", "Poet-Id": eid, "Poet-Reason": "restored"}
                    hdrs.update({"Poet-Error": reason, "Poet-Attempts": "0", "Poet-Seq": str(ack.seq)})
                    dack = await js.publish(subjects.dead_subject(ev.topic), data, headers=hdrs)
                    st.update(info=info, dstream=s.dead_stream, dseq=dack.seq)
                puts.append(t.state_kv.put(kv_key(eid), dumps(st)))
            await asyncio.gather(*puts)
        for eid, data, reason in corrupt:
            hdrs = {"Nats-Msg-Id": f"{eid}:restored", "Poet-Id": eid, "Poet-Reason": "restored"}
            ack = await js.publish(subjects.corrupt_subject(None), data, headers=hdrs)
            info = {"reason": "restored", "detail": reason, "from": "backup", "at": now}
            st = {"s": State.CORRUPT.value, "seq": ack.seq, "stream": s.corrupt_stream, "ts": now, "info": info}
            st.update(dstream=s.corrupt_stream, dseq=ack.seq)
            await t.state_kv.put(kv_key(eid), dumps(st))
        if functions:
            fkv = await js.key_value(s.function_bucket)
            for key, value in functions:
                await fkv.put(key, value)
        last = (await t.link.jsm.stream_info(s.stream)).state.last_seq
        await _restart_consumers(t, {p: first_pending.get(p, int(last) + 1) for p in range(s.partitions)})

    t.link.run(go(), timeout=3600)
    counts["corrupt"] = len(corrupt)
    return counts


async def _restart_consumers(t: NatsTransport, start: dict[int, int]) -> None:
    """Make each partition's durable consumer again, delivering from ``start[p]`` (its first pending event)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    from .setup import consumer_specs

    s = t.settings
    for p, spec in enumerate(consumer_specs(s)):
        try:
            await t.link.jsm.delete_consumer(s.stream, spec["durable_name"])
        except NotFoundError:
            pass
        await t.link.jsm.add_consumer(
            s.stream,
            ConsumerConfig(
                durable_name=spec["durable_name"],
                filter_subject=spec["filter_subject"],
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start[p],
                ack_wait=spec["ack_wait"],
                max_deliver=-1,
                max_ack_pending=spec["max_ack_pending"],
            ),
        )


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def origin(t: NatsTransport) -> dict[str, Any]:
    """What the manifest says about where the backup came from (no credentials)."""
    return {
        "backend": "nats",
        "spool": None,
        "nats": {"servers": t.settings.shown_servers(), "stream": t.settings.stream},
    }


__all__ = ["origin", "restore", "snapshot"]
