"""High-lane notices: a daemon hears of a high event as it is published, not at its next fetch's sweep.

Part of :class:`~.consumer.NatsConsumer` (a mixin over its state; the design is in :mod:`.consumer`).

A core-NATS subscription on every partition's high-lane subjects (``poet.p.<n>h.>``) tells the daemon that a
high event was just published in partition ``n``. It is interest only: the event itself is still pulled from
the partition's high durable (``poet-p<n>h``), with its key's order checked as for any other pull, so
at-least-once and key order are exactly what the pulls give; a notice lost (a reconnect, a slow subscriber) or
early (it can reach us before the stream has stored the message) only means the event waits for the next
fetch's sweep, as it did before. What a notice changes:

* A fetch that starts with notices rushes (:meth:`Lanes._rush`) without its sweep: the partitions heard from
  are pulled at once (one round trip fewer before the high event leaves).
* A fetch in progress that hears one pulls that partition's high lane before it hands out (and stops there,
  without the refill pulls), so the high event leaves with this fetch instead of waiting for the whole fetch,
  the hop back to the daemon's thread and the next fetch's sweep (the tail of emit -> handler start).
* An idle daemon waiting for work (:meth:`wait`) is woken at once.
* While high events keep coming (one heard in the last :data:`HIGH_WINDOW` seconds), regular fetches are short
  (the caller's limit, at most ``AFTER_RUSH``, as right after a rush): the next high event waits behind a short
  fetch, not a full one. Without high events nothing changes (the full limit, the throughput).

A notice whose event this daemon already holds (a sweep found it first) is dropped; one whose event is not
stored yet pulls nothing (the pull is checked in the store, as a rush's is), and the event goes with a later
fetch's sweep. Notices of partitions held by other daemons are dropped at the next fetch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ...transport import Fetched
from . import subjects
from .keyorder import PULL_LANE
from .lanes import Lanes

HIGH_WINDOW = 1.0  # seconds after a high event was heard during which regular fetches stay short


class Notices(Lanes):
    """The notice half of :class:`~.consumer.NatsConsumer`: hears high publishes, pulls their lane early."""

    _wake: threading.Event

    def _init_lanes(self) -> None:
        super()._init_lanes()
        # Partition -> ids of the high events published in it, not acted on yet ("": no Poet-Id header).
        self._noticed: dict[int, set[str]] = {}
        self._listening: Any = None  # the connection the subscriptions are on (None: not yet)
        self._subs: list[Any] = []
        self._heard_at = -HIGH_WINDOW  # time.monotonic() of the last notice
        self.high_window = HIGH_WINDOW

    async def _listen(self) -> None:
        """Subscribe, once per connection (nats-py renews subscriptions itself across reconnects)."""
        nc = self.t.link.nc
        if self._listening is nc:
            return
        await self._unlisten()  # a subscribe cut short before: none twice

        async def heard(m: Any) -> None:
            tok = subjects.lane_token(m.subject) or ""
            if tok[-1:] == "h" and tok[:-1].isdigit():
                p = int(tok[:-1])
                self._noticed.setdefault(p, set()).add((m.headers or {}).get("Poet-Id") or "")
                if p in self._held:  # another daemon's partition does not shorten this one's fetches
                    self._heard_at = time.monotonic()
                self._wake.set()  # an idle daemon fetches now (its probe may take the partition)

        for p in range(self.t.settings.partitions):
            # No payload needed: the event is pulled from its durable. nats-py has no headers-only core
            # subscription; high events are few, and each costs one small callback here.
            self._subs.append(await nc.subscribe(subjects.partition_filter(p, "h"), cb=heard))
        self._listening = nc  # only now: a subscribe refused (a server loss) is tried again at the next fetch

    async def _unlisten(self) -> None:
        """Closing: the subscriptions go (the connection may serve other consumers)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # a closed connection: gone with it
                pass

    def wait(self, timeout: float) -> None:
        """Sleep until woken (a notice, :meth:`interrupt`) or ``timeout``; new work from other processes shows up
        at the next fetch's probe, so the sleep is bounded by the probe interval."""
        self._wake.wait(max(0.0, min(timeout, max(self.t.probe_every, 0.05))))
        self._wake.clear()

    def interrupt(self) -> None:
        self._wake.set()

    def _high_lately(self) -> bool:
        """A high event was heard of in the last ``high_window`` seconds: keep this regular fetch short."""
        return time.monotonic() - self._heard_at < self.high_window

    def _heard(self) -> list[int]:
        """The held partitions a high event was published in that this daemon does not hold yet (a sweep
        usually found it first: no second pull for it); taken: each notice is acted on once."""
        if not self._noticed:
            return []
        found = []
        for p, ids in self._noticed.items():
            if p in self._held and p not in self._suspect:
                have = {h.id for h in self._buf.get(p, ())}
                if any(not i or (i not in have and i not in self._leased and i not in self._acking) for i in ids):
                    found.append(p)
        self._noticed.clear()
        return sorted(found)

    async def _rush(self, parts: list[int], out: Fetched) -> bool:
        """:meth:`Lanes._rush`, without its sweep when notices came in: the partitions heard from are pulled."""
        if not self._rushed:
            found = [p for p in self._heard() if p in parts]
            if found:
                await self._pull_high(found, out)
                self._rushed = True
                out.more = True  # the regular fetch follows at once
                return True
        return await super()._rush(parts, out)

    async def _pull_high(self, parts: list[int], out: Fetched) -> None:
        """Pull the high lanes of ``parts`` and cover their key order, as a rush does."""
        await self._pull_set([(p, "h", max(1, PULL_LANE - self._buffered(p, "h"))) for p in parts], out, confirm=True)
        await self._cover(out)

    async def _heed(self, out: Fetched, hand_out: tuple[int, float] | None = None) -> bool:
        """Pull the high lanes of the partitions heard from (as a rush does: their key order covered); True if
        any was pulled. ``hand_out`` (the fetch's limit and time): then hand out, else the caller does; the high
        event goes in its class's share, after its key's earlier events (:meth:`_hand_out`)."""
        found = self._heard()
        if not found:
            return False
        await self._pull_high(found, out)
        if hand_out is not None:
            self._hand_out(hand_out[0], out, hand_out[1])
        return True


__all__ = ["Notices"]
