"""Priority lanes on NATS: each partition's three durables pulled, merged by stream sequence, served by shares.

Part of :class:`~.consumer.NatsConsumer` (a mixin over its state). The design:

* An event of class ``high`` is published on ``poet.p.<n>h.~<key hash>.<topic>``, ``low`` on
  ``poet.p.<n>l.~<key hash>.<topic>``, ``normal`` on ``poet.p.<n>.~<key hash>.<topic>`` (:mod:`.subjects`).
  Each lane has its durable (``poet-p<n>h``, ``poet-p<n>l``, ``poet-p<n>``), leased
  together with the partition: one daemon holds all three lanes of a partition.
  A high event is pulled from its own durable, so it overtakes a normal backlog
  nobody has pulled yet.
* The buffers of the lanes are merged by stream sequence (one order for the
  whole stream), and a fetch gives each class its share (:func:`poetctl.priority.split`).
* **A key's order across lanes** (an event goes only after every earlier event of its key, in any lane):
  the coverage of each lane, key probes and cursors are :mod:`.keyorder` (:class:`~.keyorder.KeyOrder`,
  a mixin under :class:`Lanes`).
* **Takeover** needs nothing new: coverage and cursors start empty, the lanes'
  ack pending are summed into the settle wait (every lane's redeliveries are in
  hand before anything of the partition goes out).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections import deque
from collections.abc import Collection

from ...priority import DEFAULT_SHARES, PRIORITIES, split
from ...transport import Delivery, Fetched
from . import subjects
from .keyorder import PULL_LANE, Cursor, KeyOrder
from .leases import Held
from .probes import KeyProbes, raise_mark_soon, unkeyed_above
from .refused import END


class Lanes(KeyOrder):
    """The lane half of :class:`~.consumer.NatsConsumer`: pulls of all lanes, coverage, cursors, hand-out."""

    shares: dict[str, int]
    _lseqs: dict[int, list[int]]
    _lset: set[int]
    _failing: dict[str, str]
    _rushed: bool  # the last fetch was a rush (high events only): the next one pulls every lane

    def _init_lanes(self) -> None:
        self.shares = dict(getattr(self.t, "shares", None) or DEFAULT_SHARES)
        self._cov, self._top, self._short, self._cursors, self._classed = {}, {}, {}, {}, {}
        self._unsure, self._got = {}, {}
        # Reader names count on from a random start: a consumer made later under the same name (a default name's
        # id() reused in one process, a daemon restarted as the same pid) must not meet the readers the earlier one
        # left on the server (they linger for CURSOR_IDLE): the server refuses a changed start ("10012").
        self._ncur = int.from_bytes(os.urandom(4), "big") << 16
        self._sweepers = {}
        self._rushed = False
        self._keyed_from = END  # until the stream's mark is read (.setup.ensure_lanes): headers only
        self.probes = KeyProbes(direct=not getattr(self.t, "replicated", False))  # R3: the leader answers "none"

    def _forget_lanes(self, p: int) -> None:
        """Partition ``p`` is no longer held: its coverage goes (a next holding starts from the durables)."""
        self._cov.pop(p, None)
        self._top.pop(p, None)
        self._short.pop(p, None)
        self._unsure.pop(p, None)
        self._got.pop(p, None)
        self._classed.pop(p, None)
        self.probes.forget(p)
        for k in [k for k in self._cursors if k[0] == p]:
            self._drop_cursor(self._cursors.pop(k))

    # -- pulling ----------------------------------------------------------------------------------
    def _buffered(self, p: int, lane: str) -> int:
        return sum(1 for h in self._buf.get(p, ()) if h.lane == lane)

    async def _pull_lanes(self, parts: list[int], want: dict[int, int], out: Fetched) -> None:
        """Pull each partition of ``parts``: its normal lane, then (covering what that brought) high and low.

        ``want[p]`` per lane, less what the lane has buffered. A partition whose every lane came back
        short is marked dry (no more work there now).
        """
        if not parts:
            return
        # A take-over's redeliveries still to come are pulled whatever the buffer holds: JetStream sends them before
        # anything new once their AckWait runs out, which may be after the first pull filled the buffer (_settle).
        owed = {p: self._owed(p) for p in parts}
        await self._pull_set([(p, "", max(want[p] - self._buffered(p, ""), owed[p])) for p in parts], out)
        # The high lane asks for a few more than the fetch's share: a high event held back (its key waits) must
        # not keep the next ones from being pulled. Low asks for the share, as normal does: the shares split
        # what is pulled, so a lane pulled deeper would get more than its share.
        ahead = {"h": {p: max(1, max(want[p], PULL_LANE) - self._buffered(p, "h"), owed[p]) for p in parts}}
        ahead["l"] = {p: max(1, want[p] - self._buffered(p, "l"), owed[p]) for p in parts}
        small: list[tuple[int, str, int]] = []
        # A small lane's pull refused unread is checked in the store (_ask_store: a direct get) where the answer is
        # needed or lasts: a partition with events to hand out (their key order needs the lane covered), a busy one
        # (a full normal pull, or the other small lane brought something: its lanes are swept from then on), a lane
        # a sweep found something in. Elsewhere (nothing buffered) it covers nothing, and is pulled again.
        sure = {p for p in parts if "" not in self._short.get(p, ()) or self._buf.get(p)}
        plan: dict[str, tuple[list[int], set[int]]] = {}
        for lane in "hl":
            # The lanes pulled since their partition was taken are swept: one read tells which of them have
            # something new (usually none), and only those are pulled. The others are pulled.
            held = sorted(p for p in self._held if self._cov.get(p, {}).get(lane, 0) > 0 and p not in self._suspect)
            swept = [p for p in parts if p in held and not owed[p]]  # a redelivery lies below coverage: pulled
            plan[lane] = (held if swept else [], set(parts) - set(swept))
        # Both sweeps at once (each may wait a moment for the store: _sweep).
        sweeps = [lane for lane in "hl" if plan[lane][0]]
        founds = await asyncio.gather(*(self._sweep(plan[lane][0], lane) for lane in sweeps))
        for lane, found in zip(sweeps, founds, strict=True):
            found &= set(parts)
            plan[lane][1].update(found)
            sure |= found
        for lane in "hl":
            small += [(p, lane, ahead[lane][p]) for p in sorted(plan[lane][1])]
        await self._pull_set(small, out, confirm=sure)
        # A normal lane whose pull was refused unread covers nothing. Its key checks can ask probes, but the shares
        # must know whether it has more (``deep``): when high or low events wait to be handed out, ask the store.
        late = [(p, "", max(1, want[p] - self._buffered(p, ""))) for p in parts if "" in self._unsure.get(p, ())]
        if late and any(h.lane for b in self._buf.values() for h in b):
            await self._recheck(late, out)
        for p in parts:
            if len(self._short.get(p, ())) == len(subjects.LANES):
                self._dry.add(p)
            else:
                self._dry.discard(p)

    def _owed(self, p: int) -> int:
        """How many of the redeliveries partition ``p``'s take-over waits for are not in its buffer yet (0: none)."""
        settling = self._settle.get(p)
        if settling is None:
            return 0
        return max(0, settling[0] - sum(1 for h in self._buf.get(p, ()) if h.msg.metadata.num_delivered > 1))

    async def _rush(self, parts: list[int], out: Fetched) -> bool:
        """High events published since the last fetch: pull only them (and what their key order needs), so the
        fetch ends without pulling and decoding a round of normal events first (most of a fetch's time). True if
        it did; the caller then hands out and returns. Never twice in a row: the fetch after a rush pulls every
        lane, so normal and low keep their turns (and shares) under a stream of high events."""
        if self._rushed:
            self._rushed = False
            return False
        # As in _pull_lanes: one headers-only read of the high lanes of the partitions whose high lane was pulled
        # (the others' high lanes are pulled by the regular path anyway); usually "nothing new", one round trip.
        held = sorted(p for p in self._held if self._cov.get(p, {}).get("h", 0) > 0 and p not in self._suspect)
        if not held:
            return False
        found = await self._sweep(held, "h") & set(parts)
        if not found:
            return False
        await self._pull_set(
            [(p, "h", max(1, PULL_LANE - self._buffered(p, "h"))) for p in sorted(found)], out, confirm=True
        )
        await self._cover(out)
        self._rushed = True
        out.more = True  # the regular fetch follows at once
        return True

    def _drained(self, consumer: str) -> bool:
        return self._pulls is not None and self._pulls.drained(consumer)

    async def _pull_set(
        self, todo: list[tuple[int, str, int]], out: Fetched, confirm: bool | Collection[int] = False
    ) -> None:
        """Pull ``n`` of lane ``lane`` of partition ``p`` for each (together); update coverage. ``confirm`` (all, or
        these partitions, and those another of these pulls brought something of): a pull refused unread is checked
        in the store (:meth:`_ask_store`)."""
        todo = [(p, lane, n) for p, lane, n in todo if n > 0]
        # Stored before these pulls were sent: the highest pulled, and what the lane's sweeper read.
        horizon = {(p, lane): max(self._top.get(p, 0), self._swept(p, lane)) for p, lane, _ in todo}
        pulled = await asyncio.gather(*(self._pull(p, n, lane) for p, lane, n in todo))
        if not isinstance(confirm, bool):  # and the partitions where another of these pulls brought something
            confirm = {*confirm, *(p for (p, _, _), msgs in zip(todo, pulled, strict=True) if msgs)}
        proven: set[int] = set()  # of these pulls, those the store showed had nothing to bring (_ask_store)
        if confirm:
            again = [
                i
                for i, (p, lane, _) in enumerate(todo)
                if not pulled[i] and (confirm is True or p in confirm) and self._refused(p, lane)
            ]
            if again:
                proven = await self._ask_store(todo, pulled, again, horizon)
        for i, ((p, lane, n), msgs) in enumerate(zip(todo, pulled, strict=True)):
            if p not in self._held:
                continue
            cov = self._cov.setdefault(p, {})
            got = self._got.setdefault(p, {})
            short = self._short.setdefault(p, set())
            unsure = self._unsure.setdefault(p, set())
            unsure.discard(lane)
            if p in self._suspect:
                short.discard(lane)  # cut short by a server loss: covers nothing
                continue
            top = max((int(m.metadata.sequence.stream) for m in msgs), default=0)
            if top > self._keyed_from and unkeyed_above(msgs, self._keyed_from):
                self._keyed_from = END  # an older poetctl still publishes: probes cannot see its events
                raise_mark_soon(self.t)
            if len(msgs) < n and self._drained(self.t.settings.durable(p, lane)):
                short.add(lane)
                if i not in proven and self._refused(p, lane):
                    unsure.add(lane)  # nothing known past what it brought (nothing)
                else:
                    top = max(top, horizon[p, lane])
            else:
                short.discard(lane)
            cov[lane] = max(cov.get(lane, 0), top)
            got[lane] = max(got.get(lane, 0), top)
            if msgs:
                self._top[p] = max(self._top.get(p, 0), top)
                if lane:
                    self._classed[p] = time.monotonic()
            await self._take_in(p, msgs, out)

    # -- handing out --------------------------------------------------------------------------------
    def _hand_out(self, limit: int, out: Fetched, now: float, parts: list[int] | None = None) -> None:
        """Lease buffered messages of ``parts`` (all) into ``out``, up to ``limit``: each key in stream order,
        the classes by their shares."""
        cands: list[Held] = []
        for p in sorted(self._buf) if parts is None else parts:
            if p in self._settle or p in self._suspect or not self._fresh(p):
                out.deferred += len(self._buf[p])
                continue
            skipped: set[str] = set()
            for h in self._buf[p]:
                if h.key in skipped or h.key in self._failing:
                    continue
                if h.record.not_before > now:
                    skipped.add(h.key)
                    out.deferred += 1
                elif not self._clear(p, h):
                    skipped.add(h.key)
                else:
                    cands.append(h)
        room = limit - len(out.deliveries)
        if room <= 0 or not cands:
            out.more = out.more or bool(cands)
            return
        # Only normal events: stream order per partition, as they were pulled; else by the shares.
        if all(not h.lane for h in cands):
            take = cands[:room]
        else:
            # A normal lane whose pull was refused unread may have more: it keeps its share (the next fetch knows).
            deep = any("" not in self._short.get(h.p, ()) or "" in self._unsure.get(h.p, ()) for h in cands)
            take = self._by_shares(cands, room, deep)
        if len(take) < len(cands):
            out.more = True
        gone: set[int] = set()
        for h in take:
            self._leased[h.id] = h
            heapq.heappush(self._lseqs.setdefault(h.p, []), h.seq)
            self._lset.add(h.seq)
            gone.add(id(h))
            out.deliveries.append(Delivery(h.event, h.key, h.record, h))
        for p in {h.p for h in take}:
            self._buf[p] = [h for h in self._buf[p] if id(h) not in gone]

    def _by_shares(self, cands: list[Held], room: int, deep: bool) -> list[Held]:
        """Up to ``room`` of ``cands`` (each key's in order), each class its share of ``room``.

        The shares split what waits; ``deep``: the normal lane has more than was pulled (a partition's pull
        came back full), so normal counts as filling the room: its share is kept for the fetch's next pull
        instead of going to the small lanes' pulled events.
        """
        waiting = dict.fromkeys(PRIORITIES, 0)
        for h in cands:
            waiting[subjects.CLASS_OF_LANE[h.lane]] += 1
        if deep:
            waiting["normal"] = max(waiting["normal"], room)
        quota = split(room, waiting, self.shares)
        by_key: dict[str, deque[Held]] = {}
        for h in cands:
            by_key.setdefault(h.key, deque()).append(h)
        order: list[Held] = []
        pool = 0  # shares no head of their class could use (its key waits behind another class): anyone's
        while by_key:  # rounds of each key's head: a key's next event goes after its earlier one
            heads = sorted(
                (q[0] for q in by_key.values()), key=lambda h: (PRIORITIES.index(subjects.CLASS_OF_LANE[h.lane]), h.seq)
            )
            took = False
            for h in heads:
                c = subjects.CLASS_OF_LANE[h.lane]
                if quota[c] > 0:
                    quota[c] -= 1
                elif pool > 0:
                    pool -= 1
                else:
                    continue
                order.append(h)
                took = True
                q = by_key[h.key]
                q.popleft()
                if not q:
                    del by_key[h.key]
            if not took:
                # Normal's share stays normal's when its lane has more (the fetch's next pull brings them).
                keep = quota["normal"] if deep else 0
                pool += sum(quota.values()) - keep
                quota = dict.fromkeys(PRIORITIES, 0)
                if pool == 0:
                    break
        return order


__all__ = ["Cursor", "Lanes"]
