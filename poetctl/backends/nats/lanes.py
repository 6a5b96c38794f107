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
* **A key's order across lanes.** Event ``e`` (lane L, sequence s) may go only when
  every event of its key with a lower sequence, in any lane, was handed out
  before it. In its own lane the durable delivers in order. For another lane L'
  this consumer must *know* every message of L' below s (its **coverage** of L'
  reaches s), and none of them may be a waiting event of e's key:

  - a pull of a lane's durable covers the lane up to the last sequence it
    delivered (a durable delivers in sequence order; what it delivered to a
    previous holder and was not acked comes back first: ``_settle``), and a pull
    that comes back short covers it up to everything this consumer had pulled
    from the partition before sending it (those were stored earlier) - unless it
    brought nothing: nats-server acks a publish before it counts the message for
    its consumers, and refuses a no_wait pull unread while the count is 0
    (``intake.Pulls.sure``). Such a pull covers nothing; where the answer is
    needed, one direct get of the lane's next message tells (none: covered),
    and only a message there makes it pull again with a short ``expires``
    (:data:`.refused.CONFIRM`: the server then reads its store). Elsewhere probes answer
    for the keys. A lane that ran dry is rechecked by that direct get;
  - a lane with a backlog nobody pulled (the normal lane, usually; a low lane
    when many low events wait) is asked by a **key probe** (:mod:`.probes`): one
    direct get for the first event of e's key in that lane after its coverage, the
    key being in the subject; when many keys need one, or below the stream's
    key-subject mark (events published before key subjects lack the key token), it
    is read by a **cursor** instead: an ephemeral
    headers-only consumer of the lane from where its durable has delivered to,
    that indexes the ``Poet-Key`` header (the partition key's hash: a collision
    only makes an event wait; a message without the header blocks every key, so
    events published before the header existed wait rather than overtake).

  Pulled messages of the same key are ordered by the merge itself (a key with a
  waiting event skips its later ones). The lowest unfinished sequence is never
  blocked, so nothing waits forever.
* **Takeover** needs nothing new: coverage and cursors start empty, the lanes'
  ack pending are summed into the settle wait (every lane's redeliveries are in
  hand before anything of the partition goes out).

Costs: while only normal events flow, one sweeper per small lane (a headers-only
read over the held partitions' high or low lanes) stands in for pulling those
lanes of every partition each round. A cursor reads headers only; it is made when an event needs it, and kept running
ahead (to its lane's end) while high or low events of its partition were seen
in the last :data:`WARM` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time
from collections import deque
from collections.abc import Collection
from typing import Any

from ...priority import DEFAULT_SHARES, PRIORITIES, split
from ...transport import Delivery, Fetched
from . import subjects
from .leases import Held
from .probes import KeyProbes, raise_mark_soon, unkeyed_above
from .refused import CONFIRM, END, Refused

CURSOR_BATCH = 2048  # headers read per pull of a cursor
WARM = 30.0  # seconds a partition's cursor keeps reading after its last high or low event
CURSOR_IDLE = 120.0  # the cursor consumer's inactive threshold (the server deletes it after that)
NO_KEY = "*"  # the index entry of a message without Poet-Key: it blocks every key
PULL_LANE = 16  # the high and low lanes are pulled at least this far ahead (a coverage pull: at most)
PROBE_KEYS = 16  # keys probed per lane of a partition per round; more: its cursor reads the headers


def _cursor_config(name: str, base: int, filter_subject: str | None = None) -> Any:
    """An ephemeral, headers-only, unacked consumer reading from stream sequence ``base + 1``: a cursor."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(
        name=name,
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=base + 1,
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        inactive_threshold=CURSOR_IDLE,
        mem_storage=True,
        num_replicas=1,
    )


class Cursor:
    """A headers-only reader of a partition's normal lane: key hash -> sequences not yet pulled."""

    __slots__ = ("keys", "last", "n", "name", "parts", "upto", "used")

    def __init__(self, name: str, upto: int, parts: frozenset[int] = frozenset()) -> None:
        self.name = name
        self.parts = parts  # a sweeper's partitions
        self.last: dict[int, int] = {}  # a sweeper's: partition -> the last sequence of it read
        self.upto = upto  # every normal message at or below it is indexed (or pulled by the durable)
        self.keys: dict[str, list[int]] = {}
        self.n = 0  # entries in keys
        self.used = time.monotonic()


class Lanes(Refused):
    """The lane half of :class:`~.consumer.NatsConsumer`: pulls of all lanes, coverage, cursors, hand-out."""

    shares: dict[str, int]
    _lseqs: dict[int, list[int]]
    _lset: set[int]
    _failing: dict[str, str]
    # partition -> lane -> coverage (every message of the lane at or below it is known here)
    _cov: dict[int, dict[str, int]]
    _top: dict[int, int]  # partition -> highest sequence pulled from any of its lanes
    _short: dict[int, set[str]]  # partition -> lanes whose last pull came back short
    _cursors: dict[tuple[int, str], Cursor]  # (partition, lane) -> its cursor
    _classed: dict[int, float]  # partition -> when a high or low event of it was last pulled
    _ncur: int
    _sweepers: dict[str, Cursor]  # small lane -> the sweeper over its held partitions
    _rushed: bool  # the last fetch was a rush (high events only): the next one pulls every lane
    _keyed_from: int  # every event above this stream sequence has its key in its subject (.setup)
    probes: KeyProbes

    def _init_lanes(self) -> None:
        self.shares = dict(getattr(self.t, "shares", None) or DEFAULT_SHARES)
        self._cov, self._top, self._short, self._cursors, self._classed = {}, {}, {}, {}, {}
        self._unsure, self._got = {}, {}
        self._ncur = 0
        self._sweepers = {}
        self._rushed = False
        self._keyed_from = END  # until the stream's mark is read (.setup.ensure_lanes): headers only
        self.probes = KeyProbes()

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

    def _drop_cursor(self, c: Cursor) -> None:
        async def go() -> None:
            try:
                await self.t.link.jsm.delete_consumer(self.t.settings.stream, c.name)
            except Exception:  # it goes by itself after CURSOR_IDLE
                pass

        self.t.link.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(go()))

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
        await self._pull_set([(p, "", want[p] - self._buffered(p, "")) for p in parts], out)
        # The high lane asks for a few more than the fetch's share: a high event held back (its key waits) must
        # not keep the next ones from being pulled. Low asks for the share, as normal does: the shares split
        # what is pulled, so a lane pulled deeper would get more than its share.
        ahead = {"h": {p: max(1, max(want[p], PULL_LANE) - self._buffered(p, "h")) for p in parts}}
        ahead["l"] = {p: max(1, want[p] - self._buffered(p, "l")) for p in parts}
        small: list[tuple[int, str, int]] = []
        # A small lane's pull refused unread is checked in the store (_ask_store: a direct get) where the answer is
        # needed or lasts: a partition with events to hand out (their key order needs the lane covered), a busy one
        # (a full normal pull, or the other small lane brought something: its lanes are swept from then on), a lane
        # a sweep found something in. Elsewhere (nothing buffered) it covers nothing, and is pulled again.
        sure = {p for p in parts if "" not in self._short.get(p, ()) or self._buf.get(p)}
        for lane in "hl":
            # The lanes pulled since their partition was taken are swept: one read tells which of them have
            # something new (usually none), and only those are pulled. The others are pulled.
            held = sorted(p for p in self._held if self._cov.get(p, {}).get(lane, 0) > 0 and p not in self._suspect)
            swept = [p for p in parts if p in held]
            todo = set(parts) - set(swept)
            if swept:
                found = await self._sweep(held, lane) & set(parts)
                todo |= found
                sure |= found
            small += [(p, lane, ahead[lane][p]) for p in sorted(todo)]
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

    async def _sweep(self, parts: list[int], lane: str) -> set[int]:
        """Extend the coverage of ``lane`` of ``parts`` (each covered some way already) by one headers-only read
        of that lane of all of them (a sweeper: an ephemeral consumer filtering their lane subjects), usually
        "nothing new" for all at once. The partitions with a message of the lane not delivered here yet (a
        pull of their durable brings it): their coverage stays where it is."""
        s = self.t.settings
        cov = {p: self._cov.setdefault(p, {}) for p in parts}
        base = min(c.get(lane, 0) for c in cov.values())
        sw = self._sweepers.get(lane)
        now = time.monotonic()
        if sw is not None and (sw.parts != frozenset(parts) or now - sw.used > CURSOR_IDLE / 2):
            self._drop_cursor(self._sweepers.pop(lane))
            sw = None
        if sw is None:
            self._ncur += 1
            sw = Cursor(f"poetsweep-{self.name[:60]}-{lane}-{self._ncur}", base, frozenset(parts))
            filters = [subjects.partition_filter(p, lane) for p in sorted(parts)]
            cfg = _cursor_config(sw.name, base)
            if len(filters) == 1:
                cfg.filter_subject = filters[0]
            else:
                cfg.filter_subjects = filters
            await self.t.link.jsm.add_consumer(s.stream, cfg)
            self._sweepers[lane] = sw
        sw.used = now
        horizon = max(self._top.values(), default=0)  # stored before this read is sent
        pulls = self._pulls
        try:
            msgs = await pulls.pull(s.stream, sw.name, CURSOR_BATCH) if pulls is not None else []
        except Exception:  # a server loss: pull them all (the pulls judge it)
            self._sweepers.pop(lane, None)
            return set(parts)
        for m in msgs:
            seq = int(m.metadata.sequence.stream)
            tok = subjects.lane_token(m.subject) or ""
            if tok[:-1].isdigit():
                q = int(tok[:-1])
                sw.last[q] = max(sw.last.get(q, 0), seq)
            sw.upto = max(sw.upto, seq)
        end = len(msgs) < CURSOR_BATCH and pulls is not None and pulls.drained(sw.name)
        if len(msgs) < CURSOR_BATCH and not end:  # gone (a server restart loses it): pull them all
            self._sweepers.pop(lane, None)
            return set(parts)
        if end:
            sw.upto = max(sw.upto, horizon)
        found: set[int] = set()
        for p, c in cov.items():
            short = self._short.setdefault(p, set())
            # Judged against what the lane's durable delivered, not coverage: a message a sweep missed (the server
            # refuses a pull unread while its count lags a publish, Pulls.sure) is still pulled when read later.
            if sw.last.get(p, 0) > self._got.get(p, {}).get(lane, 0):
                found.add(p)  # its pull brings it; everything of the lane up to there is then known
                short.discard(lane)
                continue
            c[lane] = max(c.get(lane, 0), sw.upto)
            if end:
                short.add(lane)
            else:
                short.discard(lane)
        return found

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

    async def _cover(self, out: Fetched) -> None:
        """Extend the coverage of every lane to the buffered events of the other lanes (twice at most:
        pulls that bring new events may need one more)."""
        for _ in range(2):
            lanes: list[tuple[int, str, int]] = []
            cursors: list[tuple[int, str, int]] = []
            probes: list[tuple[int, str, str, int]] = []
            for p, buf in self._buf.items():
                if not buf or p in self._settle or p in self._suspect:
                    continue
                cov = self._cov.setdefault(p, {})
                for lane in subjects.LANES:
                    need = max((h.seq for h in buf if h.lane != lane), default=0)
                    if need <= cov.get(lane, 0):
                        continue
                    c = self._cursors.get((p, lane))
                    if c is not None and c.upto >= need:
                        continue
                    if lane in self._short.get(p, ()) and lane not in self._unsure.get(p, ()):
                        lanes.append((p, lane, max(1, PULL_LANE - self._buffered(p, lane))))  # ran dry: pull
                        continue
                    # A backlog: do not pull it. Ask the server for each waiting key's next event in it (one read
                    # each); below the key-subject mark (or for many keys), read its headers with a cursor.
                    lo = max(cov.get(lane, 0), c.upto if c is not None else 0)
                    if lo < self._keyed_from or self.probes.broken:
                        cursors.append((p, lane, need if self.probes.broken else min(need, self._keyed_from)))
                        continue
                    keys = sorted({kh for h in buf if h.lane != lane and (kh := self._unknown(p, lane, h, lo))})
                    if len(keys) > PROBE_KEYS:
                        cursors.append((p, lane, need))
                    else:
                        probes += [(p, lane, kh, lo) for kh in keys]
            if not lanes and not cursors and not probes:
                return
            s = self.t.settings
            horizon = max(self._top.values(), default=0)  # stored before the probes are sent
            await asyncio.gather(
                self._recheck(lanes, out),
                *(self._advance(p, ln, need) for p, ln, need in cursors),
                *(self.probes.probe(self.t.link.jsm, s.stream, p, ln, kh, lo, horizon) for p, ln, kh, lo in probes),
            )

    def _unknown(self, p: int, lane: str, h: Held, lo: int) -> str:
        """``h``'s key hash if no probe answers yet whether an event of its key lies in ``lane`` of ``p`` between
        ``lo`` and it; "" if known (or ``h`` is covered)."""
        if h.seq <= lo + 1:
            return ""
        kh = h.kh = h.kh or subjects.key_hash(h.key)
        return kh if self.probes.blocked(p, lane, kh, lo, h.seq) is None else ""

    async def _warm(self) -> None:
        """Keep the cursors of partitions with recent high or low events running ahead (to their lane's end)."""
        now = time.monotonic()
        for k in list(self._cursors):
            if now - self._classed.get(k[0], 0.0) > WARM:
                self._drop_cursor(self._cursors.pop(k))
        await asyncio.gather(*(self._advance(p, ln, END) for p, ln in list(self._cursors) if p in self._held))

    async def _advance(self, p: int, lane: str, need: int) -> None:
        """Read the headers of lane ``lane`` of ``p`` until its cursor covers ``need`` (or the lane's end)."""
        s = self.t.settings
        base = self._cov.get(p, {}).get(lane, 0)
        c = self._cursors.get((p, lane))
        now = time.monotonic()
        if c is not None and (now - c.used > CURSOR_IDLE / 2 or base - c.upto > 4 * CURSOR_BATCH):
            self._drop_cursor(self._cursors.pop((p, lane)))  # about to expire, or far behind: start anew
            c = None
        if c is None:
            self._ncur += 1
            c = Cursor(f"poetcur-{self.name[:60]}-{p}{lane}-{self._ncur}", base)
            cfg = _cursor_config(c.name, base, filter_subject=subjects.partition_filter(p, lane))
            await self.t.link.jsm.add_consumer(s.stream, cfg)
            self._cursors[(p, lane)] = c
        c.used = now
        pulls = self._pulls
        confirming = False
        while c.upto < need and pulls is not None:
            horizon = self._top.get(p, 0)
            try:
                if confirming:
                    msgs = await pulls.pull(s.stream, c.name, CURSOR_BATCH, expires=CONFIRM)
                else:
                    msgs = await pulls.pull(s.stream, c.name, CURSOR_BATCH)
            except Exception:  # a server loss: the events it would clear wait for the next fetch
                self._cursors.pop((p, lane), None)
                return
            for m in msgs:
                seq = int(m.metadata.sequence.stream)
                kh = (m.headers or {}).get("Poet-Key") or NO_KEY
                c.keys.setdefault(kh, []).append(seq)
                c.upto = max(c.upto, seq)
            c.n += len(msgs)
            if len(msgs) < CURSOR_BATCH:
                if not pulls.drained(c.name):  # gone (a server restart loses it): made again next time
                    self._cursors.pop((p, lane), None)
                    return
                if not pulls.sure(c.name):  # refused unread (Pulls.sure): ask again with a wait, once
                    if confirming or need >= END:  # running ahead (_warm) needs no answer now
                        break
                    confirming = True
                    continue
                c.upto = max(c.upto, horizon)
                break
        if c.n > 2 * max(0, c.upto - base) + CURSOR_BATCH:  # most entries were pulled since: prune them
            c.keys = {k: v[i:] for k, v in c.keys.items() if (i := bisect.bisect_right(v, base)) < len(v)}
            c.n = sum(len(v) for v in c.keys.values())

    def _clear(self, p: int, h: Held) -> bool:
        """True if nothing unknown or waiting of ``h``'s key lies below it in the other lanes of ``p``."""
        cov = self._cov.get(p, {})
        lane = h.lane
        for other in subjects.LANES:
            if other == lane:
                continue
            have = cov.get(other, 0)
            if have >= h.seq:
                continue
            c = self._cursors.get((p, other))
            kh = h.kh or subjects.key_hash(h.key)
            h.kh = kh
            if c is not None:
                for k in (kh, NO_KEY):
                    seqs = c.keys.get(k, ())
                    i = bisect.bisect_right(seqs, have)  # at or below ``have``: pulled, so ordered by the merge
                    if i < len(seqs) and seqs[i] < h.seq:
                        return False
                if c.upto >= h.seq:
                    continue
                have = max(have, c.upto)
            if have + 1 >= h.seq:  # nothing of ``other`` lies between (h.seq itself is in h's lane)
                continue
            # The rest of the way a probe must answer (below the mark, events may lack the key token: unknown).
            if have < self._keyed_from or self.probes.blocked(p, other, kh, have, h.seq) is not False:
                return False
        return True

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
