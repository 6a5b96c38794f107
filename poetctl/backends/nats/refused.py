"""Pulls refused unread: what a lane's pull that brought nothing says, and how the store is asked instead.

Part of :class:`~.consumer.NatsConsumer` (a mixin over its state, under :mod:`.lanes`). nats-server sends the
PubAck of a publish before its signal goroutine raises the consumers' pending counts, and refuses a no_wait pull
while the count is 0 ("404 No Messages"; "408 Requests Pending" when it is below the waiting requests' batches)
without reading its store (:meth:`.intake.Pulls.sure`). Such a pull covers nothing: where the answer is needed, one
direct get of the lane's next message tells (none: the lane is empty up to the horizon), and only a message there
makes the lane's durable be pulled again with a short ``expires`` (the server then reads its store, and answers at
once with it). A lane that ran dry is rechecked by that direct get instead of a re-pull.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...transport import Fetched
from . import subjects
from .intake import Intake

END = 1 << 62  # "to the lane's end", "none"
# A pull sent again with this wait (seconds): the server reads its store, and answers at once with what it finds,
# or after this long with nothing (only when the message found was delivered before this consumer knew it).
CONFIRM = 0.01


class Refused(Intake):
    """The store checks of :class:`~.lanes.Lanes` for pulls that brought nothing."""

    _cov: dict[int, dict[str, int]]  # partition -> lane -> coverage (.lanes)
    _top: dict[int, int]  # partition -> highest sequence pulled from any of its lanes
    _unsure: dict[int, set[str]]  # partition -> lanes whose last pull came back short: nothing, refused unread
    # partition -> lane -> every message of the lane at or below it was delivered by the lane's durable (to this
    # consumer, or before it held the partition): what its pulls showed, not what sweeps and cursors read
    _got: dict[int, dict[str, int]]
    _sweepers: dict[str, Any]  # small lane -> its sweeper (.lanes.Cursor)
    probes: Any  # .probes.KeyProbes: ``direct`` says whether a direct get may answer "none"

    async def _pull_set(self, todo: list[tuple[int, str, int]], out: Fetched, confirm: Any = False) -> None:
        raise NotImplementedError

    async def _first(self, p: int, lane: str, d: dict[int, dict[str, int]]) -> int:
        """The first message of ``lane`` of ``p`` after ``d[p][lane]`` (its coverage, or what its durable delivered),
        read from the store (a direct get; END: none, 0: unknown)."""
        from nats.js.errors import NotFoundError

        frm = d.get(p, {}).get(lane, 0) + 1
        try:
            m = await self.t.link.jsm.get_msg(
                self.t.settings.stream,
                seq=frm,
                subject=subjects.partition_filter(p, lane),
                direct=self.probes.direct,  # R3: the leader (a follower's "none" may lag it: .probes)
                next=True,
            )
            return int(m.seq)
        except NotFoundError:
            return END
        except Exception:  # unknown (a stream without direct gets, a server loss): the durable answers
            return 0

    async def _recheck(self, todo: list[tuple[int, str, int]], out: Fetched) -> None:
        """Extend the coverage of lanes that ran dry: the store tells (a direct get each, no wait) which have
        anything past their coverage; only those are pulled. (A pull that brings nothing may be refused unread.)"""
        known = max(self._top.values(), default=0)  # stored before the gets are sent
        firsts = await asyncio.gather(*(self._first(p, lane, self._cov) for p, lane, _ in todo))
        for (p, lane, _), f in zip(todo, firsts, strict=True):
            if f == END and p in self._held and p not in self._suspect:
                c = self._cov.setdefault(p, {})  # not _got: this says nothing of what the durable delivered
                c[lane] = max(c.get(lane, 0), known)
                self._unsure.setdefault(p, set()).discard(lane)
        await self._pull_set([x for x, f in zip(todo, firsts, strict=True) if f < END], out, confirm=True)

    async def _ask_store(
        self, todo: list[tuple[int, str, int]], pulled: list[list[Any]], again: list[int], horizon: dict[Any, int]
    ) -> set[int]:
        """The store's answer for the pulls ``again`` (refused unread, nothing brought). One direct get of each lane's
        first message after what its durable delivered (no wait): none proves the lane empty up to the horizon
        (those indexes are returned). Else (a message its pull did not bring: the count lagging, or one delivered
        before this consumer saw the durable's delivered point) the pull is sent again with a short wait
        (:data:`CONFIRM`; answered at once when the message is there), its horizon raised to that message."""
        # Stored before the gets are sent: everything pulled so far, these pulls' messages too.
        known = max((int(m.metadata.sequence.stream) for msgs in pulled for m in msgs), default=0)
        known = max(known, *self._top.values()) if self._top else known
        # From what the durable delivered (not coverage: a message a sweep missed lies between): the pull's question.
        firsts = await asyncio.gather(*(self._first(todo[i][0], todo[i][1], self._got) for i in again))
        proven: set[int] = set()
        for i, f in zip(again, firsts, strict=True):
            key = todo[i][:2]
            horizon[key] = max(horizon[key], known, f if f < END else 0)
            if f == END:
                proven.add(i)
        rest = [i for i in again if i not in proven]
        more = await asyncio.gather(*(self._pull(todo[i][0], todo[i][2], todo[i][1], CONFIRM) for i in rest))
        for i, msgs in zip(rest, more, strict=True):
            pulled[i] = msgs
        return proven

    def _refused(self, p: int, lane: str) -> bool:
        """True if the last pull of ``lane`` of ``p`` ended with nothing and without the server reading its store."""
        pulls = self._pulls
        durable = self.t.settings.durable(p, lane)
        return pulls is not None and pulls.drained(durable) and not pulls.sure(durable)

    def _swept(self, p: int, lane: str) -> int:
        """The last message of ``lane`` of ``p`` its sweeper read (stored, and then not yet pulled)."""
        sw = self._sweepers.get(lane)
        return sw.last.get(p, 0) if sw is not None and lane else 0


__all__ = ["CONFIRM", "Refused"]
