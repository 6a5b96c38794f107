"""The consumer's priority lanes on the spool: claim hinted high events and set-aside low ones within their shares.

How emitters decide which high events may jump the queue (the key ledger and the hints) is in priority.py;
emit imports only that side.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...priority import split
from .claims import PIPELINE
from .layout import SpoolLayout
from .priority import HINTS, name_exists

if TYPE_CHECKING:
    from collections import deque

    from ...transport import Delivery
    from .mover import Mover


class PriorityLanes:
    """The consumer's side: claim hinted high events and set-aside low ones within their shares.

    A mixin of :class:`~.consumer.FsConsumer` (uses its claim machinery).
    """

    layout: SpoolLayout
    ready: Any
    shares: dict[str, int]
    hints_fd: int
    low_names: dict[str, str]
    low_held: set[str]
    skipped: set[str]
    unconfirmed: set[str]
    relist: bool

    if TYPE_CHECKING:  # Claims' (the other base of FsConsumer)

        def _prepare(self, path: str, name: str, claim: bool) -> Delivery | None: ...

        def exhausted(self) -> bool: ...

        def claim_some(self, limit: int) -> None: ...

        def collect(self) -> None: ...

        mover: Mover | None
        outstanding: deque[tuple[int, list[Delivery]]]
        stale: bool
        retry_listing: bool
        listed: bool
        wake: threading.Event

        def list_window(self) -> None: ...

    def _init_lanes(self, shares: dict[str, int] | None) -> None:
        from ...priority import DEFAULT_SHARES

        self.shares = shares or DEFAULT_SHARES
        self.low_names = {}  # name -> key, in the order the walk found them
        self.low_held = set()  # keys whose earliest event is a set-aside low one
        self.serving_low = False
        self.normal_share = 0  # normal events the last fill left room for (defer_share)
        self.share_due = 0  # normal work's share owed by the last fetch with high events (pay_share)
        self.listing_cut = False  # the last listing was cut short for a hint: the next one is not
        # A fetch that found no hint at its start watches for one while it claims normal events
        # (hint_arrived): one that arrives mid-fetch goes out with that fetch, not the next one.
        self.watch_hints = False
        self.hint_seen = False
        self.stuck_hints: set[str] = set()  # hinted events the last fill could not claim yet
        d = self.layout.root / HINTS
        try:
            os.mkdir(d, 0o750)
        except FileExistsError:
            pass
        self.hints_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def fill_by_priority(self, limit: int) -> int:
        """Claim hinted high events and due low ones into :attr:`ready`, within their shares; how many high."""
        hints = os.listdir(self.hints_fd)
        if not hints and not self.low_names:
            return 0
        # Normal events may wait unless a listing found the window's last ones and nothing arrived since.
        normal = limit if not self.exhausted() or self._needs_listing() else 0
        quota = split(limit, {"high": len(hints), "normal": normal, "low": len(self.low_names)}, self.shares)
        # Normal work's own share beside high events (not what they leave over: pay_share claims it
        # right after a lone high event went out), as if normal events waited (the window may need a listing).
        sh = self.shares
        live = sh["high"] + sh["normal"] + (sh["low"] if self.low_names else 0)
        self.normal_share = max(1, limit * sh["normal"] // live)
        got = 0
        self.stuck_hints = set()
        if hints:
            hints.sort()
            pending = f"{self.layout.pending}/"
            high: list[Delivery] = []
            for eid in hints[: quota["high"]]:
                name = f"{eid}.json"
                # The emitter proved nothing earlier of its key is pending: a listing that raced its
                # commit (unconfirmed, see listing.py) is no reason to wait.
                self.unconfirmed.discard(name)
                d = self._prepare(pending + name, name, claim=True)
                if d is not None:
                    high.append(d)
                elif name_exists(self.layout.pending, name):
                    self.stuck_hints.add(eid)  # hint_arrived() ignores it until a fill is tried again
                    continue  # not claimable yet (its bucket is another daemon's, unreadable...): try again next fetch
                try:
                    os.unlink(eid, dir_fd=self.hints_fd)
                except FileNotFoundError:
                    pass
            self.ready.extendleft(reversed(high))  # ahead of normal events claimed before
            got = len(high)
        if quota["low"]:
            self.claim_low(quota["low"])
        return got

    def defer_share(self, high: int, paid: bool) -> None:
        """Beside ``high`` high events: owe normal work its share of this fetch unless it goes out now.

        The high events go out at once. Normal work's share (the last fill's
        quota) is claimed by the next fetch, before it looks for high events
        (:meth:`pay_share`): a lone high event waits for no normal claim, and
        under a stream of high events every fetch but the first still claims
        normal work's share (``priority_shares``), one fetch late at most.
        Nothing is owed when :attr:`ready` already holds the share beside the
        high events (claimed by earlier fetches) and, with the mover, the
        next batch is on its way (its pipeline hands out one batch behind),
        and this fetch did not begin by paying the last one's (``paid``: what
        it claimed then was that fetch's share, not this one's).
        """
        n = self.normal_share
        if n <= 0:
            return
        mover = self.mover
        piped = mover is not None and mover.alive
        if piped and self.outstanding and mover.claim_answered(self.outstanding[0][0]):  # type: ignore[union-attr]
            self.collect()  # sent by an earlier fetch; not waited for (a loaded child lags)
        if not paid and len(self.ready) - high >= n and (not piped or self.outstanding):
            return
        self.share_due = n

    def pay_share(self) -> None:
        """Claim the normal share a fetch with high events left owing (:meth:`defer_share`); no full batch.

        Each claim reads and verifies an event (~67 at a fetch of 256: milliseconds, tens under
        load), and a listing of 100,000 names takes tens of ms: done after the high events went
        out, not before. A high event hinted meanwhile cuts it short (the share stays owed; the
        listing after a cut one completes, see :meth:`listing_interrupt`); hints already there when
        it begins do not (a stream of high events leaves normal work its share).
        """
        n = self.share_due
        self.share_due = 0
        self.watch_hints, self.hint_seen = not os.listdir(self.hints_fd), False
        try:
            if self.exhausted() and self._needs_listing():
                self.wake.clear()
                self.list_window()
            mover = self.mover
            if self.hint_seen:
                pass
            elif mover is not None and mover.alive:
                if self.outstanding and mover.claim_answered(self.outstanding[0][0]):
                    self.collect()  # sent by an earlier fetch; not waited for (a loaded child lags)
                if len(self.outstanding) < PIPELINE and not self.exhausted():
                    self.claim_some(n)
            elif not self.exhausted():
                self.claim_some(n)
            if self.hint_seen:
                self.share_due = n  # cut short for a high event: the next fetch claims the share
        finally:
            self.watch_hints = self.hint_seen = False

    def _needs_listing(self) -> bool:
        return self.stale or self.relist or self.retry_listing or not self.listed or self.wake.is_set()

    def listing_interrupt(self) -> Callable[[], bool] | None:
        """What may cut a listing short: a hint (:meth:`hint_arrived`) - but never two listings in a row.

        A listing of 100,000 names takes tens of ms (much more on a loaded
        machine); the listing after an interrupted one always completes, so
        a stream of high events cannot keep the window from being listed.
        """
        if self.listing_cut:
            self.listing_cut = False  # this one completes
            return None
        return self._cut_listing if self.watch_hints else None

    def _cut_listing(self) -> bool:
        if self.hint_arrived():
            self.listing_cut = True
            return True
        return False

    def hint_arrived(self) -> bool:
        """Was a high event hinted since this fetch began (one that found none)? Claim loops stop for it.

        Called between small groups of normal claims (every 32 names) and
        before a listing: a listdir of the hints directory, ~5 us, almost
        always empty. A fetch that began by handing out high events does not
        watch (a flood of high events leaves normal work its share).
        """
        if not self.watch_hints:
            return False
        if not self.hint_seen:
            hints = os.listdir(self.hints_fd)
            self.hint_seen = bool(hints) and not self.stuck_hints.issuperset(hints)
        return self.hint_seen

    def claim_low(self, n: int) -> int:
        """Claim up to ``n`` set-aside low events (their keys' later events were kept behind them)."""
        pending = f"{self.layout.pending}/"
        got = 0
        self.serving_low = True
        try:
            for name in list(self.low_names)[:n]:
                key = self.low_names.pop(name)
                self.low_held.discard(key)
                self.skipped.discard(key)  # it was skipped only behind this low event (else it would not be here)
                d = self._prepare(pending + name, name, claim=True)
                if d is not None:
                    self.ready.append(d)
                    got += 1
                self.relist = True  # later events of its key were skipped: list again once through
        finally:
            self.serving_low = False
        return got

    def set_aside_low(self, name: str, key: str) -> None:
        """The walk read a low event: keep it (and its key's later events) for the low share."""
        self.low_names[name] = key
        self.low_held.add(key)

    def reset_lanes(self) -> None:
        """A new listing: the walk finds the low events again, in order."""
        self.low_names = {}
        self.low_held = set()

    def close_lanes(self) -> None:
        if self.hints_fd >= 0:
            os.close(self.hints_fd)
            self.hints_fd = -1


__all__ = ["PriorityLanes"]
