"""``poetctl restore --mode nats``: verified archives (either backend's) into an empty NATS backend, streaming.

The archives are verified whole first (:class:`~..fs.archive.Archives`:
nothing is published before every checksum matched), then read again member
by member. The target must be empty and no daemon attached (exit 75: a live
lease or membership entry in the lease bucket, or a partition consumer with
pull requests waiting), since the partition consumers are made again.

Publishing order: the finished events (processed and dead) as they come,
then the pending ones in id order (the order the spool hands a key out in;
a spool archive holds its in-flight events after its pending ones). The
pending events are spilled to a private temporary directory and published
from there in order, so memory holds a batch of events, not the archive.
Each partition's durable consumer is then made again starting at its first
pending event, so finished events are never handed to a handler again and
each key's pending events keep their order. A dead event goes to the
dead-letter stream too, with its archived record (an older archive without
one: "restored from a backup").
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import TemporaryFailure, UsageError
from ...transport import Record, State, dead_letter_info
from ..fs.archive import ERROR, Archives, event_id, is_event
from ..memory import decode
from . import subjects
from .backup import REASON, RESTORED, SUFFIX, _restart_consumers
from .dead import to_headers
from .subjects import kv_key
from .transport import dumps

if TYPE_CHECKING:
    from ...event import Event
    from .transport import NatsTransport

BATCH = 256
BATCH_BYTES = 2 << 20  # a batch of large events is cut short: memory holds about this much of them


async def _is_empty(t: NatsTransport) -> str | None:
    """Why the target is not empty, or None."""
    s = t.settings
    for stream in (s.stream, s.dead_stream, s.corrupt_stream, f"KV_{s.state_bucket}"):
        info = await t.link.jsm.stream_info(stream)
        if info.state.messages:
            return f"stream {stream} holds {info.state.messages} message(s)"
    return None


async def _attached(t: NatsTransport) -> str | None:
    """Which daemon is attached to the target, or None: a live lease or membership entry, or a pulling consumer."""
    from nats.js.errors import NotFoundError

    from .status import lease_entries

    s = t.settings
    try:
        live = await lease_entries(t)
    except NotFoundError:
        live = {}
    for key in sorted(live):
        if key.startswith("m."):
            return f"daemon {key[2:]} is a member (lease bucket {s.lease_bucket})"
        if key.startswith("p") and key[1:].isdigit():
            return f"partition lease {key} is held (lease bucket {s.lease_bucket})"
    for p in range(s.partitions):
        try:
            ci = await t.link.jsm.consumer_info(s.stream, s.durable(p))
        except NotFoundError:
            continue
        if ci.num_waiting:
            return f"consumer {s.durable(p)} has {ci.num_waiting} pull request(s) waiting"
    return None


def _record(data: bytes | None) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(data) if data is not None else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


class _Restore:
    """One restore: the publishing state between members (see the module docstring)."""

    def __init__(self, t: NatsTransport, archives: Archives, until: float | None, spill: str) -> None:
        self.t, self.s, self.archives, self.until, self.spill = t, t.settings, archives, until, spill
        self.names = archives.names
        self.now = t.clock()
        self.counts: dict[str, int] = {}
        self.batch: list[tuple[str, str, Event, bytes]] = []  # (id, state, event, bytes), not yet published
        self.batch_bytes = 0
        self.first_pending: dict[int, int] = {}
        self.records: dict[str, dict[str, Any]] = {}  # dead-letter records seen before their event
        self.dead_waiting: dict[str, tuple[int, str, bytes]] = {}  # dead events published before their record
        self.quarantined: dict[str, bytes] = {}  # corrupt input waiting for its reason line
        self.reasons: dict[str, str] = {}  # reason lines waiting for their input
        self.corrupt = 0

    def kept(self, name: str) -> bool:
        return name in self.names and (self.until is None or self.archives.timestamp(name) <= self.until)

    async def run(self) -> dict[str, int]:
        t, s = self.t, self.s
        functions = None
        for name, data in self.archives.members():
            parts = name.split("/")
            if is_event(name):
                if not self.kept(name):
                    continue
                self.counts[parts[1]] = self.counts.get(parts[1], 0) + 1
                if parts[1] == "pending":  # spilled, published in id order after every finished one
                    fd = os.open(
                        os.path.join(self.spill, event_id(name)),
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        0o600,
                    )
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                    continue
                eid = event_id(name)
                await self._add(eid, parts[1], data)
            elif parts[0] == "events" and parts[1] == "dead":
                await self._dead_record(event_id(name), data)
            elif parts[0] == "events":
                await self._quarantined(name, parts[2], data)
            elif self.until is not None:
                continue  # handler state describes the end of the backup, not TIME (as on the spool)
            elif parts[0] == "kv":
                functions = functions or await t.link.js.key_value(s.function_bucket)
                await functions.put(parts[2], data)
            else:  # the spool's state/ and feedback/ files: no NATS equivalent, file by file
                self.counts["skipped_state_files"] = self.counts.get("skipped_state_files", 0) + 1
        await self._flush()
        for eid in sorted(self.dead_waiting):  # its record never came (a damaged one is left out): a stand-in
            await self._finish_dead(eid, None)
        for base, data in sorted(self.quarantined.items()):
            await self._quarantine(base, data, "restored from a backup")
        for eid in sorted(os.listdir(self.spill)):
            with open(os.path.join(self.spill, eid), "rb") as fh:
                data = fh.read()
            await self._add(eid, "pending", data)
        await self._flush()
        last = (await t.link.jsm.stream_info(s.stream)).state.last_seq
        await _restart_consumers(t, {p: self.first_pending.get(p, int(last) + 1) for p in range(s.partitions)})
        self.counts["corrupt"] = self.corrupt
        return self.counts

    async def _add(self, eid: str, state: str, data: bytes) -> None:
        self.batch.append((eid, state, decode(data, eid), data))
        self.batch_bytes += len(data)
        if len(self.batch) >= BATCH or self.batch_bytes >= BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        """Publish the batch (concurrently, in order of acknowledgement per message) and write its KV entries."""
        t, s, js = self.t, self.s, self.t.link.js
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        keys = [t.key_of(ev) for _, _, ev, _ in batch]
        parts = [subjects.partition_of(k, s.partitions) for k in keys]
        # Poet-Key as a publish gives it: a restored event without one would hold back every key's
        # later high events in its partition until it is pulled.
        acks = await asyncio.gather(
            *(
                js.publish(
                    subjects.event_subject(ev.topic, p, "", subjects.key_hash(k)),
                    data,
                    headers={"Nats-Msg-Id": eid, "Poet-Id": eid, "Poet-Key": subjects.key_hash(k)},
                )
                for (eid, _, ev, data), p, k in zip(batch, parts, keys, strict=True)
            )
        )
        puts = []
        for (eid, state, ev, data), part, ack in zip(batch, parts, acks, strict=True):
            st: dict[str, Any] = {"s": state, "seq": ack.seq, "p": part, "ts": ev.timestamp}
            if state == "pending":
                self.first_pending.setdefault(part, ack.seq)
            elif state == "dead":
                if f"events/dead/{eid}{ERROR}" in self.names and eid not in self.records:
                    self.dead_waiting[eid] = (ack.seq, ev.topic, data)  # its record is further on: entry then
                    continue
                st.update(await self._dead_letter(eid, ack.seq, ev.topic, data, self.records.pop(eid, None)))
            puts.append(t.state_kv.put(kv_key(eid), dumps(st)))
        await asyncio.gather(*puts)

    async def _dead_letter(
        self, eid: str, seq: int, topic: str, data: bytes, record: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Publish a dead letter with its record (else one saying it was restored); the KV entry's extra fields."""
        s = self.s
        info = dict(record) if record else dead_letter_info(eid, RESTORED, Record(), self.now)
        reason = str(info.get("reason") or "restored")
        hdrs = to_headers(eid, seq, reason, info, int(info.get("attempts") or 0), self.now)
        dack = await self.t.link.js.publish(subjects.dead_subject(topic), data, headers=hdrs)
        return {"info": info, "dstream": s.dead_stream, "dseq": dack.seq}

    async def _dead_record(self, eid: str, data: bytes) -> None:
        if not self.kept(f"events/dead/{eid}{SUFFIX}"):
            return  # its event is left out (--until)
        record = _record(data)
        if eid in self.dead_waiting:
            await self._finish_dead(eid, record)
        elif record is not None:
            self.records[eid] = record

    async def _finish_dead(self, eid: str, record: dict[str, Any] | None) -> None:
        """A dead event published before its record came: its dead letter and its KV entry now."""
        seq, topic, body = self.dead_waiting.pop(eid)
        extra = await self._dead_letter(eid, seq, topic, body, record)
        ev = decode(body, eid)
        part = subjects.partition_of(self.t.key_of(ev), self.s.partitions)
        st = {"s": State.DEAD.value, "seq": seq, "p": part, "ts": ev.timestamp, **extra}
        await self.t.state_kv.put(kv_key(eid), dumps(st))

    async def _quarantined(self, name: str, base: str, data: bytes) -> None:
        """Quarantined input and its reason line (``<name>.reason``), published once both are seen."""
        if name.endswith(REASON):
            body_name = base[: -len(REASON)]
            reason = data.decode("utf-8", "replace").strip() or "restored from a backup"
            if body_name in self.quarantined:
                await self._quarantine(body_name, self.quarantined.pop(body_name), reason)
            else:
                self.reasons[body_name] = reason
        elif f"{name}{REASON}" in self.names and base not in self.reasons:
            self.quarantined[base] = data
        else:
            await self._quarantine(base, data, self.reasons.pop(base, "restored from a backup"))

    async def _quarantine(self, base: str, data: bytes, reason: str) -> None:
        s = self.s
        eid = base[: -len(SUFFIX)] if base.endswith(SUFFIX) else base  # the spool's own names
        hdrs = {"Nats-Msg-Id": f"{eid}:restored", "Poet-Id": eid, "Poet-Reason": "restored"}
        ack = await self.t.link.js.publish(subjects.corrupt_subject(None), data, headers=hdrs)
        info = {"reason": "restored", "detail": reason, "from": "backup", "at": self.now}
        st = {"s": State.CORRUPT.value, "seq": ack.seq, "stream": s.corrupt_stream, "ts": self.now, "info": info}
        st.update(dstream=s.corrupt_stream, dseq=ack.seq)
        await self.t.state_kv.put(kv_key(eid), dumps(st))
        self.corrupt += 1


def restore(t: NatsTransport, archives: Archives, until: float | None) -> dict[str, int]:
    """Publish the verified ``archives`` into the empty backend of ``t``; counts per state.

    Refused with :class:`TemporaryFailure` (75) while a daemon is attached,
    and :class:`UsageError` (2) if the target holds anything.
    """
    s = t.settings

    async def go() -> dict[str, int]:
        who = await _attached(t)
        if who is not None:
            raise TemporaryFailure(
                f"a daemon is attached to the NATS target ({who}); stop every daemon on it and retry "
                f"(a killed daemon's lease expires after {s.lease_ttl:g} s)"
            )
        why = await _is_empty(t)
        if why is not None:
            raise UsageError(f"the NATS target is not empty ({why}); restore only into an empty stream")
        # A private directory (0700, outside any spool; removed at the end): the pending events, in id order.
        with tempfile.TemporaryDirectory(prefix="poetctl-restore-") as spill:
            return await _Restore(t, archives, until, spill).run()

    result: dict[str, int] = t.link.run(go(), timeout=3600)
    return result


__all__ = ["restore"]
