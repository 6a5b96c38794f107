"""Partition leases and membership for :class:`~.consumer.NatsConsumer` (a mixin: the lease half of it).

A daemon pulls a partition only while it holds its lease: KV entry ``p<n>``
in ``POET_LEASES``, made with ``create`` (exclusive), refreshed by a keeper
thread every tick, expired by the bucket's TTL when its daemon dies. Daemons
announce themselves as ``m.<name>``; the fair share is ``ceil(partitions /
live daemons)``. A lease is kept while its partition's pulls come back full,
handed back when the partition runs dry with nothing in hand, after
``hold_idle``, or at once when over the fair share (whose excess is drained
first: nothing new is pulled there).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

from ...event import Event
from ...transport import Fetched, Record
from .retry import transient


class Held:
    """A pulled message: not yet handed out (buffered) or leased to the loop."""

    __slots__ = ("event", "id", "key", "kh", "lane", "msg", "p", "record", "seq", "since")

    def __init__(self, msg: Any, p: int, seq: int, event: Event, key: str, record: Record, lane: str = "") -> None:
        self.msg = msg
        self.p = p
        self.seq = seq
        self.event = event
        self.id = event.id
        self.key = key
        self.record = record
        self.lane = lane  # the priority lane it was pulled from ("" normal, "h" high, "l" low: .lanes)
        self.kh = ""  # its key's hash, once needed (.lanes)
        self.since = time.monotonic()


class PartitionLeases:
    """The lease half of :class:`~.consumer.NatsConsumer` (its attributes are made there)."""

    t: Any  # the NatsTransport (Any: no import cycle with .transport)
    name: str
    tick: float
    hold_idle: float
    _lock: threading.RLock
    _held: dict[int, int]
    _buf: dict[int, list[Held]]
    _leased: dict[str, Held]
    _recovered: set[int]
    _settle: dict[int, tuple[int, float]]
    _renewed: dict[int, float]
    _suspect: set[int]
    _idle_since: dict[int, float]
    _dry: set[int]
    _members: int
    _stop: threading.Event
    _dead: bool
    _closed: bool
    # Acked deliveries whose ack is queued and not yet sent (the pipeline's loop removes them).
    _acking: dict[str, Held]

    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        return self.t.link.run(coro, timeout)

    def _send(self, coro: Any) -> None:
        raise NotImplementedError

    async def _announce(self) -> None:
        await self.t.lease_kv.put(f"m.{self.name}", b"1")
        await self._count_members()

    async def _count_members(self) -> None:
        """Live daemons = member keys in the lease bucket: one stream-info request (a KV key listing would make
        a consumer each time), so it runs every beat and a joining daemon gets its share within a tick.

        A daemon that left cleanly still counts until its tombstone expires (lease_ttl): the share is
        smaller than it could be for that long, never larger.
        """
        b = self.t.settings.lease_bucket
        info = await self.t.link.jsm.stream_info(f"KV_{b}", subjects_filter=f"$KV.{b}.m.>")
        self._members = max(1, len(info.state.subjects or {}))

    def _keep(self) -> None:
        """Keeper thread: membership, lease refresh and in_progress for held messages, every tick.

        The lock is taken on this thread, never inside a coroutine: the loop
        thread must not wait for a lock whose holder waits for the loop. The
        snapshot before a beat is taken without it (copies of dicts and lists
        are atomic under the GIL): a fetch holds the lock for as long as its
        pulls take, and a beat that waited for it could come too late.
        """
        beats = 0
        while not self._stop.wait(self.tick):
            try:
                if self._dead or self._closed:
                    return
                held = dict(self._held)
                old = time.monotonic() - self.tick
                # Only the held partitions' messages: a lost partition's leased ones expire and go,
                # in order, to the next holder (who may then also see them handled here: twice, not lost).
                msgs = [h.msg for h in list(self._leased.values()) if h.since < old and h.p in held]
                msgs += [h.msg for b in list(self._buf.values()) for h in list(b) if h.since < old]
                # Handled, their acks still queued: kept alive too, so AckWait cannot hand them out again.
                msgs += [h.msg for h in list(self._acking.values()) if h.since < old]
                # Not under the lock: a refresh must not wait for fetches and outcomes (a beat late by
                # more than the TTL loses the leases). A give-back racing a refresh makes one of the two
                # fail on the revision; a lease refreshed after its give-back just expires.
                revs = self._run(self._beat(held, msgs, beats % 4 == 0), timeout=max(5.0, self.tick * 4))
                beats += 1
                with self._lock:
                    for p, rev in held.items():
                        if p not in revs:
                            if self._held.get(p) == rev:
                                self._lose(p)
                        elif self._held.get(p) == rev:
                            self._held[p] = revs[p]
            except Exception:  # a missed beat is retried next tick
                continue

    def _lose(self, p: int) -> None:
        """Partition ``p``'s lease was lost (a stall past the TTL): stop using it at once.

        Buffered messages go back (nak) for the next holder, in order; leased ones finish here.
        """
        buffered = sorted(self._buf.get(p, ()), key=lambda h: h.seq)
        self._drop(p)

        async def nak() -> None:
            for h in buffered:
                await h.msg._client.publish(h.msg.reply, b"-NAK")  # repeatable (msg.nak() refuses a second)

        self._send(nak)

    async def _beat(self, held: dict[int, int], msgs: list[Any], announce: bool) -> dict[int, int]:
        """Refresh the leases (first: they expire), keep pulled messages alive, announce membership."""
        from nats.js.errors import KeyWrongLastSequenceError

        out: dict[int, int] = {}

        async def refresh(p: int, rev: int) -> None:
            # Each lease on its own, all at once, with a short timeout: through a server loss a beat must
            # not take longer than the TTL (a lease missed now is retried next tick, with the same revision).
            sent = time.monotonic()  # the server's TTL runs from after this: the lease is ours until sent + TTL
            try:
                out[p] = await self.t.lease_kv.update(f"p{p}", self.name.encode(), last=rev, validate_keys=False)
                self._renewed[p] = sent
            except KeyWrongLastSequenceError:
                # Ours still, if an earlier refresh went through and only its answer was lost; else lost (_lose).
                try:
                    e = await self.t.lease_kv.get(f"p{p}")
                    if e.value == self.name.encode():
                        out[p] = int(e.revision)
                except Exception:  # expired (not found) or unreachable: lost
                    pass
            except Exception as exc:
                if not transient(exc):
                    raise
                # Not refreshed this time (a server loss): kept while the server-side TTL surely has not
                # run out, and retried at the next beat with the same revision.
                if time.monotonic() - self._renewed.get(p, 0.0) < self.t.settings.lease_ttl * 0.75:
                    out[p] = rev

        await asyncio.gather(*(refresh(p, rev) for p, rev in held.items()))
        for m in msgs:
            try:
                await m.in_progress()
            except Exception:  # acked meanwhile (MsgAlreadyAckdError): the others still need theirs
                pass
        try:
            await (self._announce() if announce else self._count_members())
        except Exception as exc:  # a server loss: the last count stands until the next beat
            if not transient(exc):
                raise
        return out

    def _cap(self) -> int:
        return math.ceil(int(self.t.settings.partitions) / max(1, self._members))

    async def _probe(self, free: list[int]) -> list[tuple[int, int, int]]:
        """(partition, pending, ack pending) of the partitions not held here."""
        s = self.t.settings

        async def one(p: int) -> tuple[int, int, int]:
            # The partition's three lane durables together (.lanes): a holder takes them all.
            cis = await asyncio.gather(
                *(self.t.link.jsm.consumer_info(s.stream, s.durable(p, ln)) for ln in ("", "h", "l"))
            )
            return p, sum(int(c.num_pending or 0) for c in cis), sum(int(c.num_ack_pending or 0) for c in cis)

        return list(await asyncio.gather(*(one(p) for p in free)))

    async def _take(self, p: int) -> bool:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        sent = time.monotonic()
        try:
            self._held[p] = await self.t.lease_kv.create(f"p{p}", self.name.encode())
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            # Held by another daemon; or its lease expired between nats-py's create and the read it makes
            # after a refusal (KeyNotFoundError): free now, taken at a later probe.
            return False
        self._renewed[p] = sent
        self._buf.setdefault(p, [])
        return True

    def _fresh(self, p: int) -> bool:
        """Partition ``p``'s lease is surely still ours: renewed (the request sent) within 3/4 of the TTL."""
        return bool(time.monotonic() - self._renewed.get(p, 0.0) < self.t.settings.lease_ttl * 0.75)

    async def _reassert(self, p: int) -> bool:
        """Renew a held lease that is not :meth:`_fresh` (a keeper that fell behind) before handing out more
        of ``p``; False if it is not ours any more (then it is lost: :meth:`_lose`) or NATS did not answer.

        The fence of per-key order: a daemon that stalled past the TTL finds its lease taken and stops
        handing out what it pulled, which goes back (nak) to the next holder in order.
        """
        from nats.js.errors import KeyWrongLastSequenceError

        rev = self._held.get(p)
        if rev is None:
            return False
        sent = time.monotonic()
        try:
            new = await self.t.lease_kv.update(f"p{p}", self.name.encode(), last=rev, validate_keys=False)
        except KeyWrongLastSequenceError:
            try:
                e = await self.t.lease_kv.get(f"p{p}")
                mine = e.value == self.name.encode()
                new = int(e.revision)
            except Exception:  # expired (not found) or unreachable
                mine = False
            if not mine:
                if self._held.get(p) == rev:
                    self._lose(p)
                return False
            # A refresh by the keeper went through meanwhile: ours, renewed at least as recently as this.
        except Exception as exc:
            if not transient(exc):
                raise
            return False  # not now: nothing of p is handed out until a beat or a later fetch renews it
        if self._held.get(p) == rev or self._held.get(p) == new:
            self._held[p] = new
            self._renewed[p] = max(self._renewed.get(p, 0.0), sent)
        return True

    def _drop(self, p: int) -> int | None:
        """Forget partition ``p`` (under the lock); the lease revision to delete, if it was held."""
        rev = self._held.pop(p, None)
        self._buf.pop(p, None)
        self._idle_since.pop(p, None)
        self._recovered.discard(p)
        self._dry.discard(p)
        self._settle.pop(p, None)
        self._renewed.pop(p, None)
        self._suspect.discard(p)
        self._forget_lanes(p)
        return rev

    def _forget_lanes(self, p: int) -> None:
        """Forget what the lanes knew of partition ``p`` (:mod:`.lanes`)."""

    async def _free(self, p: int, rev: int | None) -> None:
        if rev is not None:
            try:
                await self.t.lease_kv.delete(f"p{p}", last=rev)
            except Exception:  # someone took it over after a stall: nothing of ours to free
                pass

    async def _give_back(self, p: int) -> None:
        await self._free(p, self._drop(p))

    async def _acquire(self, out: Fetched | None, for_recovery: bool = False) -> int:
        free = [p for p in range(self.t.settings.partitions) if p not in self._held]
        moved = 0
        for p, pending, ack_pending in await self._probe(free) if free else []:
            work = ack_pending if for_recovery else pending + ack_pending
            if not work:
                continue
            if len(self._held) >= self._cap() or not await self._take(p):
                if out is not None:
                    out.deferred += pending
                continue
            if ack_pending:
                # The previous holder's deliveries come back first, but in the order their AckWait ran
                # out, not stream order: lease nothing of p until all are here (sorted), or until they
                # surely would be (an ack in flight when it died is pending and never comes back).
                self._settle[p] = (ack_pending, time.monotonic() + 2 * self.t.settings.ack_wait + 1)
            if for_recovery:
                moved += ack_pending
                self._recovered.add(p)
            elif out is not None:
                out.recovered += ack_pending  # a dead holder's deliveries, taken over by this fetch
        return moved

    async def _give_back_idle(self) -> None:
        """Hand back held partitions with nothing in hand that ran dry, were idle for ``hold_idle``, or
        are over the fair share. A partition whose pulls come back full keeps its lease between batches.

        Deliveries whose ack is still queued count as in hand (:meth:`_busy`): the lease goes only after
        their acks, else the next holder gets them back once AckWait runs out and handles them again.
        """
        now = time.monotonic()
        over = len(self._held) - self._cap()
        for p in sorted(self._held, reverse=True):
            if self._busy(p):
                self._idle_since.pop(p, None)
                continue
            since = self._idle_since.setdefault(p, now)
            if over > 0 or p in self._dry or now - since >= self.hold_idle:
                over -= 1
                await self._give_back(p)

    def _busy(self, p: int, acks: bool = True) -> bool:
        """Something of partition ``p`` buffered, leased, or (``acks``) handled with its ack still queued."""
        if self._buf.get(p) or any(h.p == p for h in self._leased.values()):
            return True
        return acks and any(h.p == p for h in list(self._acking.values()))


__all__ = ["Held", "PartitionLeases"]
