"""A consumer's intake: pulling a partition's messages, checking what a server loss may have lost, decoding.

Part of :class:`~.consumer.NatsConsumer` (a mixin over its state; the design is in :mod:`.consumer`).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from ...errors import InvalidData
from ...transport import Fetched, Record, State
from ..memory import decode
from .leases import Held, PartitionLeases
from .retry import retrying, transient
from .subjects import lane_token


async def _reply(m: Any, body: bytes) -> None:
    """Ack (``+ACK``), nak (``-NAK``), term (``+TERM``) ``m``; unlike ``m.ack()``, safe to repeat after a server loss.

    nats-py marks a message acknowledged once its ack is buffered, and refuses a second one; an ack
    lost with a dead server's socket must be sent again (a repeated ack is harmless to JetStream).
    """
    await m._client.publish(m.reply, body)
    m._ackd = True


async def _progress(m: Any) -> None:
    """Tell JetStream ``m`` is still being worked on; a server loss is ridden out (the keeper sends it every tick)."""
    try:
        await m.in_progress()
    except Exception as exc:
        if not transient(exc):
            raise


class _Held(Held):
    """A pulled message, and whether its id has a KV state entry (which then must be kept current)."""

    __slots__ = ("kv",)

    def __init__(self, msg: Any, p: int, seq: int, event: Any, key: str, record: Record, kv: bool, lane: str) -> None:
        super().__init__(msg, p, seq, event, key, record, lane)
        self.kv = kv


def _kv(h: Held) -> bool:
    return not isinstance(h, _Held) or h.kv


STATE_READS = 64  # KV state reads of redeliveries in flight at once (:meth:`Intake._states`)


class RecentAcks:
    """Stream sequences this consumer sent an ack (or a record and an ack) for lately, kept ``keep`` to 2 x ``keep``
    seconds (two generations of sets: one ``add`` and a clock read per ack, no per-entry expiry).

    A daemon that stalls past AckWait holding a message acks it late; the server may have redelivered it to this
    daemon's next pull before it read that ack. The copy reaches :meth:`Intake._take_in` after the ack left
    (``_acking`` no longer has it) and, for a normal event whose ack the floor covers, finds no KV record: without
    this it would be handled a second time, after later events of its key. A copy found here is acked instead.
    """

    __slots__ = ("_new", "_old", "_turn", "keep")

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self._new: set[int] = set()
        self._old: set[int] = set()
        self._turn = time.monotonic() + keep

    def add(self, seq: int) -> None:
        now = time.monotonic()
        if now >= self._turn:
            self._old, self._new = self._new, set()
            self._turn = now + self.keep
        self._new.add(seq)

    def __contains__(self, seq: int) -> bool:
        return seq in self._new or seq in self._old


class Pulls:
    """No-wait pull requests answered on one persistent wildcard inbox (``<inbox>.<n>``), made once.

    Cheaper than a subscription per pull (subscribe, unsubscribe) and a ``next_msg`` (a task and a
    timer) per message: a pull's messages are collected by the subscription's callback, and the pull
    waits once, until the batch is full or the server's status message (404/408/409) ends it.
    Delivered messages carry their own subject, not the inbox: they are matched to the pull by the
    consumer named in their ack subject (one pull per consumer at a time); status messages by the
    inbox token. Messages that arrive for a pull given up on (a timeout: a server loss) are dropped;
    the caller treats its partition as suspect (they come back after AckWait).
    """

    def __init__(self, nc: Any, timeout: float = 10.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._sub: Any = None
        self._prefix = ""
        self._n = 0
        self._open: dict[str, tuple[list[Any], int, asyncio.Future[None]]] = {}  # consumer -> its pull
        self._toks: dict[str, str] = {}  # inbox token -> consumer
        # consumer -> the status that ended its last pull ("" when the batch filled): only 404 and 408 say
        # "nothing more is there now" (a missing consumer answers 503: that says nothing; .lanes relies on it)
        self.ended: dict[str, str] = {}
        self.got: dict[str, int] = {}  # consumer -> messages its last pull brought

    async def _on(self, m: Any) -> None:
        if m.headers and m.headers.get("Status"):
            consumer = self._toks.get(m.subject[len(self._prefix) :], "")
            got = self._open.get(consumer)
            if got is not None and not got[2].done():
                self.ended[consumer] = f"{m.headers.get('Status')} {m.headers.get('Description') or ''}".strip()
                got[2].set_result(None)  # 404 no messages, 408 expired, 409: the end of this pull
            return
        try:
            consumer = m.metadata.consumer
        except Exception:  # not a JetStream delivery: nothing of ours
            return
        got = self._open.get(consumer)
        if got is None:
            return
        msgs, batch, done = got
        msgs.append(m)
        if len(msgs) >= batch and not done.done():
            done.set_result(None)

    async def pull(self, stream: str, consumer: str, batch: int, expires: float = 0.0) -> list[Any]:
        """Up to ``batch`` messages, no waiting for more; ``expires`` (seconds): the server reads its store for
        this pull and, finding nothing, answers after that long (a no_wait pull without it may be refused
        unread: :meth:`sure`)."""
        if self._sub is None:
            inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(inbox + ".*", cb=self._on)
            self._prefix = inbox + "."
        self._n += 1
        tok = str(self._n)
        msgs: list[Any] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open[consumer] = (msgs, batch, done)
        self.ended[consumer] = ""
        self.got[consumer] = 0
        self._toks[tok] = consumer
        api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        body = b'{"batch":%d,"no_wait":true' % batch
        body += b',"expires":%d}' % int(expires * 1e9) if expires > 0 else b"}"
        try:
            await self.nc.publish(api, body, reply=self._prefix + tok)
            await asyncio.wait_for(done, self.timeout + expires)
        finally:
            del self._open[consumer], self._toks[tok]
        self.got[consumer] = len(msgs)
        return msgs

    def drained(self, consumer: str) -> bool:
        """True if the last pull of ``consumer`` ended because nothing more was there (404/408), not otherwise."""
        return self.ended.get(consumer, "")[:3] in ("404", "408")

    def sure(self, consumer: str) -> bool:
        """True if the last pull of ``consumer`` was drained after the server read its store: everything stored
        before the pull was sent is delivered (to it, or earlier). nats-server acks a publish before it raises
        its consumers' pending counts (a queue, another goroutine), and refuses a no_wait pull while the count
        is 0 ("404 No Messages", or "408 Requests Pending" when it is below the waiting requests' batches)
        without reading the store: a drained pull that brought nothing says nothing, unless it waited
        (``expires``: "408 Request Timeout" comes after the store was read). A 404 after a message comes
        from the delivery loop, which hit the end of the store."""
        end = self.ended.get(consumer, "")
        return (end[:3] == "404" and self.got.get(consumer, 0) > 0) or end == "408 Request Timeout"


class Intake(PartitionLeases):
    """Pulls (no-wait pull requests), suspect checks after a reconnect, decoding into the partition buffers."""

    _pipe: Any
    _lset: set[int]
    _pulls: Pulls | None = None
    _acked: RecentAcks

    async def _quarantine(
        self, m: Any, eid: str, topic: str | None, seq: int, reason: str, detail: str, where: str
    ) -> None:
        raise NotImplementedError

    async def _pull(self, p: int, batch: int, lane: str = "", expires: float = 0.0) -> list[Any]:
        """Up to ``batch`` messages of lane ``lane`` of partition ``p`` without waiting for more (a no_wait pull
        request; ``expires``: see :meth:`Pulls.pull`)."""
        s = self.t.settings
        pulls = self._pulls
        if pulls is None or pulls.nc is not self.t.link.nc:
            pulls = self._pulls = Pulls(self.t.link.nc)
        try:
            if expires:
                return await pulls.pull(s.stream, s.durable(p, lane), batch, expires=expires)
            return await pulls.pull(s.stream, s.durable(p, lane), batch)
        except Exception as exc:
            if not transient(exc):
                raise
            # Cut short (a server loss): messages sent to this pull may be lost, and JetStream redelivers
            # them only after AckWait, behind what is pulled next: check before handing out more of p.
            self._suspect.add(p)
            from ...daemon import log

            log.warning("a NATS pull was cut short; checking the partition", partition=p, error=repr(exc))
            return []

    async def _check_suspects(self) -> None:
        """For each suspect partition: if the server has more of it awaiting acks than this daemon holds,
        the rest was lost in transit and comes back after AckWait; lease nothing of it until then (sorted)."""
        s = self.t.settings
        for p in sorted(self._suspect):
            if p not in self._held:
                self._suspect.discard(p)
                continue
            try:
                await self._pipe.drain(keep=True)  # acks sent here are not what is missing (sync reports failures)
                lanes = ("", "h", "l")  # every lane's durable (.lanes)
                cis = await asyncio.gather(*(self.t.link.jsm.consumer_info(s.stream, s.durable(p, ln)) for ln in lanes))
            except Exception as exc:
                if transient(exc):
                    return  # still settling: try again at the next fetch, handing out nothing of p meanwhile
                raise
            self._suspect.discard(p)
            mine = len(self._buf.get(p, ())) + sum(1 for h in self._leased.values() if h.p == p)
            missing = sum(int(ci.num_ack_pending or 0) for ci in cis) - mine
            if missing > 0:
                from ...daemon import log

                log.info("messages lost in transit come back after AckWait; waiting for them", partition=p, n=missing)
                self._settle[p] = (missing, time.monotonic() + 2 * s.ack_wait + 1)

    async def _states(self, ids: list[str]) -> dict[str, Any]:
        """The KV state entries of ``ids`` (redeliveries), read STATE_READS at a time.

        A take-over brings a dead holder's deliveries back all at once (thousands, with a large ``max_inflight``).
        Read one after another, at a round trip each, they kept the loop busy for seconds: past the lease TTL
        under load, so the keeper's refresh came too late and another daemon took the partitions over again.
        """
        out: dict[str, Any] = {}
        for i in range(0, len(ids), STATE_READS):
            chunk = ids[i : i + STATE_READS]
            got = await asyncio.gather(*(retrying(partial(self.t._state, eid)) for eid in chunk))
            out.update(zip(chunk, got, strict=True))
        return out

    async def _take_in(self, p: int, msgs: list[Any], out: Fetched) -> None:
        """Decode pulled messages into the partition's buffer (in stream order: its priority lanes merge);
        quarantine the unreadable."""
        buf = self._buf.setdefault(p, [])
        have = {h.seq for h in buf} | {h.seq for h in self._leased.values() if h.p == p}
        # Handled here with the ack still queued (AckWait ran out first): the queued ack settles it.
        have.update(h.seq for h in list(self._acking.values()) if h.p == p)
        todo: list[tuple[Any, Any, int, str, Any]] = []  # (message, metadata, sequence, id, headers)
        for m in msgs:
            md = m.metadata
            seq = md.sequence.stream
            if seq in have:
                continue  # redelivered while we still hold it (AckWait passed during a stall): keep ours
            if seq in self._acked:  # handled and acked here, redelivered before the server read the ack
                try:
                    await _reply(m, b"+ACK")
                except Exception as exc:  # lost: it comes back once more (and, later, is judged by its record)
                    if not transient(exc):
                        raise
                continue
            hdrs = m.headers or {}
            todo.append((m, md, seq, hdrs.get("Poet-Id") or hdrs.get("Nats-Msg-Id") or f"seq-{seq}", hdrs))
        states = await self._states([eid for _, md, _, eid, _ in todo if md.num_delivered > 1])
        for m, md, seq, eid, hdrs in todo:
            try:
                ev = decode(m.data, eid)
            except InvalidData as exc:
                reason, _, detail = exc.message.partition(": ")
                await retrying(partial(self._quarantine, m, eid, None, seq, reason, detail, "pending"))
                out.quarantined += 1
                continue
            record = Record()
            if md.num_delivered > 1:
                st = states.get(eid)
                if st is not None and st.get("s") in (State.PROCESSED, State.DEAD, State.CORRUPT):
                    try:
                        await _reply(m, b"+ACK" if st["s"] == State.PROCESSED else b"+TERM")
                    except Exception as exc:  # lost: it comes back once more, and is found done again
                        if not transient(exc):
                            raise
                    continue  # its outcome was recorded and the ack lost: nothing to do again
                if st is not None and st.get("rec"):
                    record = Record.from_dict(st["rec"])
            # An entry exists (or may: a redelivery) for keyed ids, redeliveries, and the copies replay and
            # dead-letter retry publish (their Nats-Msg-Id is not the id): acks then write it too.
            kv = md.num_delivered > 1 or "Poet-Kv" in hdrs or hdrs.get("Nats-Msg-Id") != eid
            tok = lane_token(m.subject) or ""  # "<n>", "<n>h", "<n>l": the lane it came from (.lanes)
            lane = tok[-1] if tok[-1:] in ("h", "l") else ""
            buf.append(_Held(m, p, seq, ev, self.t.key_of(ev), record, kv, lane))
        buf.sort(key=lambda h: h.seq)
