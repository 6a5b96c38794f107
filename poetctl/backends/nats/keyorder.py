"""Key order across lanes: coverage of each lane, key probes, cursors and sweepers (headers-only readers).

Part of :class:`~.consumer.NatsConsumer` (a mixin over its state, under :mod:`.lanes`). The design:

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

Costs: while only normal events flow, one sweeper per small lane (a headers-only
read over the held partitions' high or low lanes) stands in for pulling those
lanes of every partition each round. A cursor reads headers only; it is made when an event needs it, and kept running
ahead (to its lane's end) while high or low events of its partition were seen
in the last :data:`WARM` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

from ...transport import Fetched
from . import subjects
from .leases import Held
from .probes import KeyProbes
from .refused import CONFIRM, END, Refused
from .retry import transient

CURSOR_BATCH = 2048  # headers read per pull of a cursor
WARM = 30.0  # seconds a partition's cursor keeps reading after its last high or low event
CURSOR_IDLE = 120.0  # the cursor consumer's inactive threshold (the server deletes it after that)
NO_KEY = "*"  # the index entry of a message without Poet-Key: it blocks every key
PULL_LANE = 16  # the high and low lanes are pulled at least this far ahead (a coverage pull: at most)
PROBE_KEYS = 16  # keys probed per lane of a partition per round; more: its cursor reads the headers
# An empty sweep that may have been refused unread is sent again with this wait (seconds) where its answer decides
# a buffered event's key order: the server reads its store, and answers after this long when nothing is there.
SWEEP_CONFIRM = 0.001


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


class KeyOrder(Refused):
    """The key-order half of :class:`~.lanes.Lanes`: coverage of the lanes, key probes, cursors, sweepers."""

    # partition -> lane -> coverage (every message of the lane at or below it is known here)
    _cov: dict[int, dict[str, int]]
    _top: dict[int, int]  # partition -> highest sequence pulled from any of its lanes
    _short: dict[int, set[str]]  # partition -> lanes whose last pull came back short
    _cursors: dict[tuple[int, str], Cursor]  # (partition, lane) -> its cursor
    _classed: dict[int, float]  # partition -> when a high or low event of it was last pulled
    _ncur: int
    _sweepers: dict[str, Cursor]  # small lane -> the sweeper over its held partitions
    _keyed_from: int  # every event above this stream sequence has its key in its subject (.setup)
    probes: KeyProbes

    def _buffered(self, p: int, lane: str) -> int:  # .lanes
        raise NotImplementedError

    def _drop_cursor(self, c: Cursor) -> None:
        async def go() -> None:
            try:
                await self.t.link.jsm.delete_consumer(self.t.settings.stream, c.name)
            except Exception:  # it goes by itself after CURSOR_IDLE
                pass

        self.t.link.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(go()))

    async def _make_reader(self, cfg: Any) -> bool:
        """Create the ephemeral cursor or sweeper ``cfg``; False if NATS did not answer (a server loss, an election).

        Its caller then takes the path a failed read of it takes: nothing is known from it this time. A consumer the
        server made although its answer was lost goes by itself after :data:`CURSOR_IDLE`.
        """
        try:
            await self.t.link.jsm.add_consumer(self.t.settings.stream, cfg)
            return True
        except Exception as exc:
            if not transient(exc):
                raise
            from ...daemon import log

            log.warning(
                "NATS did not make a headers reader; trying again next fetch", consumer=cfg.name, error=repr(exc)
            )
            return False

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
            if not await self._make_reader(cfg):  # not now (a server loss): pull them all (the pulls judge it)
                return set(parts)
            self._sweepers[lane] = sw
        sw.used = now
        horizon = max(self._top.values(), default=0)  # stored before this read is sent
        pulls = self._pulls
        try:
            msgs = await pulls.pull(s.stream, sw.name, CURSOR_BATCH) if pulls is not None else []
            # "Nothing" may be a refusal unread (its count lagging a publish: Pulls.sure), and it would count the lane
            # as checked up to the horizon, past a message published before a buffered event of its key: where that
            # decides something, ask again with a short wait, which makes the server read its store.
            if (
                pulls is not None
                and not msgs
                and pulls.drained(sw.name)
                and not pulls.sure(sw.name)
                and self._sweep_matters(cov, lane, sw, horizon)
            ):
                msgs = await pulls.pull(s.stream, sw.name, CURSOR_BATCH, expires=SWEEP_CONFIRM)
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

    def _sweep_matters(self, cov: dict[int, dict[str, int]], lane: str, sw: Cursor, horizon: int) -> bool:
        """True if extending ``lane``'s coverage to ``horizon`` could clear a buffered event of another lane (one of
        its partitions has such an event above the lane's coverage, and at or below the horizon)."""
        if horizon <= sw.upto:
            return False
        for p, c in cov.items():
            have = c.get(lane, 0)
            if any(have < h.seq and h.lane != lane for h in self._buf.get(p, ())):
                return True
        return False

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
            if not await self._make_reader(cfg):  # not now (a server loss): the events it would clear wait
                return
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


__all__ = ["PULL_LANE", "Cursor", "KeyOrder"]
