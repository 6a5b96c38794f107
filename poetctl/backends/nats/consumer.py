"""One daemon's side of NATS: partition leases, pulls in key order, outcomes as acks and KV records.

Per-key order across daemons (the design; notes/natscore.md has the why):

* The publisher puts each event on ``poet.p.<n>.~<key hash>.<topic>``, ``n`` = crc32 of
  its partition key modulo ``partitions``; each partition has one durable
  pull consumer ``poet-p<n>``, and one per priority lane (``poet-p<n>h``,
  ``poet-p<n>l``: :mod:`.lanes` merges them, keeping each key's order).
* A daemon pulls a partition only while it holds the partition's lease: a
  KV entry ``p<n>`` in ``POET_LEASES`` made with ``create`` (exclusive) and
  refreshed every ``lease_ttl/4`` by a keeper thread; the bucket's TTL
  expires the lease of a daemon that died.
* A lease is taken when the partition has work and this daemon is under its
  fair share (``ceil(partitions / live daemons)``; daemons announce
  themselves as ``m.<name>`` in the same bucket), kept while its pulls come
  back full, and given back when it runs dry with nothing in hand, after
  ``hold_idle``, or when over the fair share (:mod:`.leases`): joining and
  leaving rebalance at batch boundaries.
* Messages a holder has pulled are kept alive (``in_progress``) by the keeper,
  so AckWait only runs out for a dead holder's messages. AckWait is shorter
  than the lease TTL minus a keeper tick: when a dead holder's lease has
  expired its messages are already due for redelivery, and JetStream
  redelivers before anything new - in the order their AckWait ran out, so the
  next holder collects them all (``_settle``) and hands them out in stream order.

Records (begin/done/fail) and states are KV ``POET_STATE`` entries under the
event id; a redelivered message reads its record from there.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from ...transport import Attempt, Delivery, Fetched, State
from . import subjects
from .dead import to_headers
from .fastpub import header_value
from .intake import RecentAcks, _Held, _kv, _progress, _reply
from .leases import Held
from .notice import Notices
from .pipeline import UNCONFIRMED, Op, Pipeline
from .retry import RUN_TIMEOUT, retrying, transient
from .setup import ensure_lanes
from .subjects import kv_key
from .transport import NatsTransport, dumps

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
PULL_MAX = 64  # messages pulled ahead per partition
AFTER_RUSH = 64  # the most a fetch right after a rush hands out (high events keep coming: keep it short)


class NatsConsumer(Notices):
    """Leases due events from the partitions this daemon holds. Thread-safe (one lock)."""

    def __init__(self, transport: NatsTransport, name: str | None = None) -> None:
        self.t = transport
        s = transport.settings
        self.name = _SAFE.sub("_", name or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}")[:100]
        self._lock = threading.RLock()
        self._held: dict[int, int] = {}  # partition -> lease revision
        self._buf: dict[int, list[Held]] = {}
        self._leased: dict[str, Held] = {}
        self._lseqs: dict[int, list[int]] = {}  # partition -> heap of leased sequences (stale ones popped lazily)
        self._lset: set[int] = set()  # the sequences leased now
        self._acking: dict[str, Held] = {}  # acked, the ack still queued (see _ack)
        self._acked = RecentAcks(2 * s.ack_wait + 1)  # acks sent lately: a copy sent before the server read one
        self._failing: dict[str, str] = {}  # key -> id of its failing lease
        self._recovered: set[int] = set()
        # Partitions taken over with deliveries outstanding: (redeliveries still expected, until when).
        self._settle: dict[int, tuple[int, float]] = {}
        self._renewed: dict[int, float] = {}  # held partition -> when its lease was last refreshed
        self._idle_since: dict[int, float] = {}  # held partition -> when it last had nothing buffered or leased
        self._dry: set[int] = set()  # held partitions whose last pull came back short: no more work there then
        # Held partitions whose pulled messages may have been lost in transit (a pull cut short, a reconnect):
        # checked against the server before anything more of them is handed out (see _check_suspects).
        self._suspect: set[int] = set()
        self._epoch = transport.link.epoch
        # Records and acks sent in order, confirmed at sync (acks without a record: by a flush).
        self._pipe = Pipeline(transport.link.loop, flush=lambda: transport.link.nc.flush(timeout=5))
        self._members = 1
        self._next_probe = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dead = self._closed = False
        self.tick = max(0.2, min(s.ack_wait, s.lease_ttl) / 4)
        # An idle partition is kept this long before it is handed back (re-taking costs a probe and a KV
        # create): leases stay while work flows; over the fair share, the excess is drained and handed back.
        self.hold_idle = transport.hold_idle if transport.hold_idle is not None else s.lease_ttl / 2
        self._init_lanes()  # and the notices' (.notice)
        # A stream set up before the lanes gets them; where key subjects start (.lanes probes above it).
        self._keyed_from = int(self._run(retrying(lambda: ensure_lanes(transport)), RUN_TIMEOUT))
        self._run(retrying(self._announce), RUN_TIMEOUT)
        self._keeper = threading.Thread(target=self._keep, name=f"poetctl-nats-keeper-{self.name}", daemon=True)
        self._keeper.start()

    def _run(self, coro: Any, timeout: float = RUN_TIMEOUT) -> Any:
        return self.t.link.run(coro, timeout)

    # -- the contract ---------------------------------------------------------------------------
    def _alive(self) -> None:
        if self._dead:
            raise RuntimeError(f"consumer {self.name} crashed; use another one")

    def recover(self) -> int:
        with self._lock:
            self._alive()
            return int(self._run(retrying(lambda: self._acquire(None, for_recovery=True))))

    def fetch(self, limit: int) -> Fetched:
        with self._lock:
            self._alive()
            out = Fetched()
            self._run(self._fetch_or_suspect(limit, out))
            return out

    async def _fetch_or_suspect(self, limit: int, out: Fetched) -> None:
        """:meth:`_fetch`, riding out a request NATS did not answer (a server loss, an election) wherever it came.

        What the fetch handed out stands (leased, in ``out``). What it pulled and had not buffered yet may be lost
        here, and comes back after AckWait behind later messages: every held partition is suspect, so nothing more
        of it goes out until the server's ack-pending counts are checked (:meth:`_check_suspects`, next fetch).
        """
        try:
            await self._fetch(limit, out)
        except Exception as exc:
            if not transient(exc):
                raise
            self._suspect.update(self._held)
            from ...daemon import log

            log.warning("NATS did not answer during a fetch; checking the partitions held", error=repr(exc))

    async def _fetch(self, limit: int, out: Fetched) -> None:
        await self._listen()
        now_real = time.monotonic()
        if now_real >= self._next_probe:
            self._next_probe = now_real + self.t.probe_every
            try:
                await self._acquire(out)
            except Exception as exc:  # a server loss: the partitions held go on; probe again next time
                if not transient(exc):
                    raise
        if self.t.link.epoch != self._epoch:  # reconnected: what was in the old socket may be lost
            self._epoch = self.t.link.epoch
            self._suspect.update(self._held)
        if self._suspect:
            await self._check_suspects()
        pulling: set[int] = set()
        if self._rushed or self._high_lately():  # normal and low get this fetch (never two rushes in a row); a
            limit = min(limit, AFTER_RUSH)  # short one, as a high event published meanwhile waits for it (.notice)
        if self._held:
            # Small prefetch: what is pulled and not yet begun is what a takeover must wait for.
            batch = max(1, min(PULL_MAX, math.ceil(limit / len(self._held))))
            pulling = set(sorted(self._held)[: self._cap()])  # over the fair share: drain the rest, pull nothing new
            want = {p: max(batch, self._settle.get(p, (0, 0.0))[0]) for p in self._held if p in pulling}
            if await self._rush(sorted(want), out):
                pulling = set()  # nothing more pulled in this fetch (the next one pulls every lane)
            else:
                await self._pull_lanes(list(want), want, out)
                await self._cover(out)  # what the other lanes hold below each buffered event is known
                await self._warm()
                await self._heed(out)  # a high event published meanwhile (.notice): out with this fetch
        for p, (_, until) in list(self._settle.items()):
            if not self._owed(p) or time.monotonic() >= until:
                del self._settle[p]
        for p in [p for p, b in self._buf.items() if b and not self._fresh(p)]:
            await self._reassert(p)  # a keeper that fell behind: is the lease still ours?
        now = self.t.clock()
        self._hand_out(limit, out, now)
        # Room left, and partitions whose pull came back full with all of it handed out: pull those again,
        # no more than the room (nothing beyond what the caller asked for is buffered: the prefetch bound
        # holds). A fetch then fills the caller's limit from a busy partition instead of stopping at
        # PULL_MAX: each fetch is a thread hop, and each sync a flush round trip.
        while len(out.deliveries) < limit:
            if await self._heed(out, (limit, now)):  # a high event published meanwhile: out now, no more refills
                break
            again = [
                p
                for p in sorted(pulling)
                if p in self._held
                and p not in self._dry
                and not any(not h.lane for h in self._buf.get(p, ()))  # no normal event left here
                and "" not in self._short.get(p, ())  # and more in its normal lane
                and p not in self._settle
                and p not in self._suspect
                and self._fresh(p)
            ]
            if not again:
                break
            n = max(1, math.ceil((limit - len(out.deliveries)) / len(again)))  # the room: the caller's bound
            await self._pull_lanes(again, dict.fromkeys(again, n), out)
            await self._cover(out)
            self._hand_out(limit, out, now, again)
        await self._give_back_idle()

    # -- recording --------------------------------------------------------------------------------
    def _mine(self, d: Delivery) -> Held | None:
        self._alive()
        h: Held = d.handle
        return h if self._leased.get(d.id) is h else None

    def _state(self, h: Held, state: State, **extra: Any) -> bytes:
        st: dict[str, Any] = {"s": state.value, "seq": h.seq, "p": h.p, "ts": h.event.timestamp, **extra}
        return dumps(st)

    def _put_record(self, h: Held, state: State = State.INFLIGHT) -> None:
        """Write ``h``'s record behind everything sent before it, and wait for it (durable on return)."""
        data = self._state(h, state, rec=h.record.to_dict())
        self._send(lambda: self._put_async(h, data))
        self._wait_sent()

    def begin(self, delivery: Delivery) -> None:
        """Sends the record (deliveries + 1) without waiting for the server (pipelined; :meth:`sync` waits).

        It is on the connection's loop when this returns, so a process killed in a handler has
        used the attempt. Not ``num_delivered`` instead: it also counts deliveries leased and never begun.
        """
        with self._lock:
            h = self._mine(delivery)
            if h is None:
                return
            h.record.deliveries += 1
            # Serialized when sent, not now: an ack in the same burst supersedes it (a fast handler), and
            # then it is never built. Sent later, it carries a newer record: harmless, done/ack follow it.
            self._pipe.send(lambda: self._put_async(h, self._state(h, State.INFLIGHT, rec=h.record.to_dict())), h.id)

    def _send(self, op: Op) -> None:
        """Run ``op()`` on the loop after everything sent before it, without waiting (:meth:`_wait_sent` waits).

        Repeated from the start if a server loss cuts it short: it must be safe to repeat.
        """
        self._pipe.send(op)

    def _wait_sent(self, raise_failure: bool = True) -> None:
        """Wait until everything sent so far is on the server (PubAcks in); raise the first failure."""
        failure = self._run(self._pipe.drain())
        if failure is not None and raise_failure:
            from ...errors import BackendUnavailable

            raise BackendUnavailable(f"NATS at {self.t.settings.shown_servers()} refused a record: {failure}")

    async def _put_async(self, h: Held, data: bytes) -> Any:
        """Send ``h``'s state entry; the PubAck future (the pipeline awaits it with the burst)."""
        if isinstance(h, _Held):
            h.kv = True  # from now on an entry may exist: every later outcome must write it
        return await self.t.link.js.publish_async(f"$KV.{self.t.settings.state_bucket}.{kv_key(h.id)}", data)

    def done(self, delivery: Delivery, handler: str) -> None:
        with self._lock:
            h = self._mine(delivery)
            if h is not None:
                h.record.done.add(handler)
                self._put_record(h)

    def fail(self, delivery: Delivery, attempt: Attempt, not_before: float) -> None:
        with self._lock:
            h = self._mine(delivery)
            if h is not None:
                h.record.failures.append(attempt)
                h.record.not_before = not_before
                self._failing[h.key] = h.id
                self._put_record(h)
                self._run(_progress(h.msg))

    # -- outcomes ---------------------------------------------------------------------------------
    def _end(self, h: Held) -> None:
        self._leased.pop(h.id, None)
        self._lset.discard(h.seq)
        if self._failing.get(h.key) == h.id:
            del self._failing[h.key]

    async def _maybe_give_back(self, p: int) -> None:
        if p in self._held and not self._busy(p) and p in self._dry:
            await self._give_back(p)

    def _covered(self, h: Held) -> bool:
        """True if the ack floor will cover ``h`` once the acks sent so far land: nothing of its partition
        with a lower sequence is outstanding here, and nothing of it is unaccounted for (settling, suspect)."""
        p = h.p
        if p in self._settle or p in self._suspect:
            return False
        buf = self._buf.get(p)
        if buf and buf[0].seq < h.seq:
            return False
        heap = self._lseqs.get(p)
        while heap and heap[0] not in self._lset:
            heapq.heappop(heap)
        return not heap or heap[0] >= h.seq

    def ack(self, delivery: Delivery) -> None:
        """Sends the ack (behind the KV record, when one is needed) without waiting; :meth:`sync` confirms.

        The record is written only when the derived state would be wrong without it (:mod:`.derive`):
        the id has an entry (keyed, a begun record or failure reached the server, a redelivery), the
        ack lands above a message of its partition still outstanding, or the stream is replicated: a
        leader killed before it replicates an ack loses it, and the redelivery must find the entry a
        quorum confirmed, or its handlers run again. Both are on the connection's
        loop when this returns (sub-millisecond later on the wire): a process killed in between loses
        them, and the event is redelivered with its earlier handlers skipped - the window the spool's
        mover pipe closes. :meth:`sync` raises if one failed.
        """
        with self._lock:
            h = self._mine(delivery)
            if h is None:
                return
            covered = self._covered(h)
            self._end(h)
            # Its partition ran dry: hand it back now (after this ack, and the ones queued before it).
            free = h.p in self._dry and not self._busy(h.p, acks=False)
            rev = self._drop(h.p) if free else None
            self._acking[h.id] = h
            self._pipe.send(lambda: self._ack(h, covered, free, rev), h.id, supersede=True)
            if free:
                self._wait_sent()  # the lease is gone on return: another daemon's next fetch can take it

    async def _ack(self, h: Held, covered: bool, free: bool, rev: int | None) -> Any:
        # The record first, then the ack (one connection: in this order on the wire). A lost ack after
        # the record is harmless: the redelivery finds the event processed and acks it. Without a record
        # (``h.kv`` is read here, on the loop: a begin record superseded in this burst never went out)
        # the pipeline confirms the ack itself (a flush: the server has read it) before sync returns.
        self._acking[h.id] = h  # again, when a server loss makes the pipeline repeat this
        try:
            # High and low events (few) always get their entry: a reader that takes a message's state from its
            # partition's normal durable (backup.py's snapshot, today) never takes a finished one for pending.
            record = _kv(h) or not covered or self.t.replicated or bool(h.lane)
            pub = await self._put_async(h, self._state(h, State.PROCESSED)) if record else UNCONFIRMED
            await _reply(h.msg, b"+ACK")
        finally:
            self._acked.add(h.seq)  # before the pop: a copy taken in between is in one of the two
            self._acking.pop(h.id, None)  # sent, or failed (then resent by the pipeline): a copy is acked again
        if free:
            await self._free(h.p, rev)
        return pub

    def dead(self, delivery: Delivery, reason: str, info: dict[str, Any]) -> None:
        with self._lock:
            h = self._mine(delivery)
            if h is None:
                return
            self._end(h)
            s = self.t.settings

            async def go() -> None:
                hdrs = to_headers(h.id, h.seq, reason, info, h.record.attempts, self.t.clock())
                ack = await self.t.link.js.publish(subjects.dead_subject(h.event.topic), h.msg.data, headers=hdrs)
                st = self._state(h, State.DEAD, info=info, dstream=s.dead_stream, dseq=ack.seq)
                await self.t.state_kv.put(kv_key(h.id), st)
                await _reply(h.msg, b"+TERM")
                await self._maybe_give_back(h.p)

            self._send(go)  # behind the records and acks sent before it
            self._wait_sent()

    async def _quarantine(
        self, m: Any, eid: str, topic: str | None, seq: int, reason: str, detail: str, where: str
    ) -> None:
        s = self.t.settings
        info = {"reason": reason, "detail": detail, "from": where, "at": self.t.clock()}
        hdrs = {
            "Nats-Msg-Id": f"{eid}:{seq}",
            "Poet-Id": header_value(eid, 400),
            "Poet-Reason": header_value(reason, 200),
        }
        hdrs["Poet-Detail"] = header_value(detail)
        ack = await self.t.link.js.publish(subjects.corrupt_subject(topic), m.data or b"", headers=hdrs)
        st = {"s": State.CORRUPT.value, "seq": seq, "ts": self.t.clock(), "info": info}
        st.update(dstream=s.corrupt_stream, dseq=ack.seq)
        await self.t.state_kv.put(kv_key(eid), dumps(st))
        await _reply(m, b"+TERM")

    def quarantine(self, delivery: Delivery, reason: str, detail: str) -> None:
        with self._lock:
            h = self._mine(delivery)
            if h is None:
                return
            self._end(h)

            async def go() -> None:
                await self._quarantine(h.msg, h.id, h.event.topic, h.seq, reason, detail, "inflight")
                await self._maybe_give_back(h.p)

            self._send(go)  # behind the records and acks sent before it
            self._wait_sent()

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            mine = [h for d in deliveries if (h := self._mine(d)) is not None]
            for h in mine:
                self._end(h)

            async def go() -> None:
                for h in sorted(mine, key=lambda h: h.seq):
                    await self.t.state_kv.put(kv_key(h.id), self._state(h, State.PENDING, rec=h.record.to_dict()))
                    await _reply(h.msg, b"-NAK")
                for p in {h.p for h in mine}:
                    if p in self._held and not self._busy(p):
                        await self._give_back(p)  # handed back (shutdown): the lease goes too

            if mine:
                self._send(go)  # behind the records and acks sent before it
                self._wait_sent()

    def sync(self) -> None:
        """Wait for the server's PubAck of every record and ack sent so far; raise the first failure."""
        self._alive()
        self._wait_sent()

    def settle(self) -> None:
        """Wait (without raising) until what begin/ack sent is confirmed: this process reads its own writes."""
        if not (self._closed or self._dead):
            self._wait_sent(raise_failure=False)

    def close(self) -> None:
        with self._lock:
            if self._closed or self._dead:
                return
            self._closed = True
            self._stop.set()
            leftovers = sorted(
                [*self._leased.values(), *(h for b in self._buf.values() for h in b)], key=lambda h: h.seq
            )

            async def go() -> None:
                await self._unlisten()
                await self._pipe.drain()  # a failure: the redelivery finds what was recorded
                for h in leftovers:
                    if h.id in self._leased:
                        rec = h.record.to_dict()
                        data = self._state(h, State.PENDING, rec=rec)
                        # Briefly: a stop during an outage must not hang; the redelivery finds the last record.
                        try:
                            await retrying(partial(self.t.state_kv.put, kv_key(h.id), data), 10.0)
                        except Exception as exc:  # still naked and handed back below: it is redelivered
                            if not transient(exc):
                                raise
                    try:
                        await _reply(h.msg, b"-NAK")
                    except Exception:  # lost: it comes back after AckWait
                        pass
                self._leased.clear()
                self._buf.clear()
                for p in list(self._held):
                    await self._give_back(p)
                try:
                    await self.t.lease_kv.delete(f"m.{self.name}")
                except Exception:  # membership expires by itself
                    pass

            try:
                self._run(go())
            finally:
                self._keeper.join(self.tick * 4 + 5)

    # -- introspection and test hooks ---------------------------------------------------------------
    def holds(self, event_id: str) -> bool:
        return event_id in self._leased

    def leased_count(self) -> int:
        return len(self._leased)

    def local_states(self) -> dict[str, State]:
        """Ids this consumer holds: leased (inflight) and pulled but not handed out (still pending)."""
        with self._lock:
            out = {h.id: State.PENDING for b in self._buf.values() for h in b}
            out.update((i, State.INFLIGHT) for i in self._leased)
            return out

    def partitions(self) -> list[int]:
        """The partitions this consumer holds now."""
        with self._lock:
            return sorted(self._held)

    def crash(self) -> list[int]:
        """Test hook: this consumer's process died (no acks, no naks, leases left to expire); its partitions."""
        with self._lock:
            self._dead = True
            self._stop.set()
            self._suspect.clear()
            held = sorted(self._held)
        self._keeper.join(self.tick * 4 + 5)
        return held


__all__ = ["NatsConsumer"]
