"""Key probes: is there an unpulled event of key K in lane L of a partition below sequence s? One server read.

Event subjects carry their key hash (``poet.p.<n><lane>.~<kh>.<tail>``, :mod:`.subjects`), so a direct
get of the stream with ``next_by_subj`` = that key's subjects of the lane (:func:`.subjects.key_filter`)
from the lane's coverage + 1 answers it, whatever the lane's backlog: it returns the first such event at
or after that sequence (or 404: none). Used by :mod:`.lanes` for a high or low event whose key must be
checked against the normal backlog nobody pulled yet, instead of reading that backlog's headers.

An answer stays true for the sequences it saw: no event of the key in ``[frm, nxt)``, and every
sequence up to ``upto`` was stored before it was asked (the highest this consumer had pulled), so
nothing of the key can appear there later.

On a replicated stream (R3) the leader answers (``$JS.API.STREAM.MSG.GET``), not a direct get: ``allow_direct``
lets every replica answer those, and a follower applies what the leader committed a little later, so its "none"
may miss an event the leader stored and acknowledged before this consumer pulled a later one (the horizon). A
message found is right from any replica (it holds everything below it); only "none" needs the leader.
"""

from __future__ import annotations

from typing import Any

from . import subjects

NONE = 1 << 62  # "no event of the key from frm on"
KEEP = 4096  # answers kept (dropped all at once beyond it: they are cheap to ask again)
FAILS = 3  # probes failing in a row before headers are read instead


class KeyProbes:
    """The answers of key probes per (partition, lane, key hash), and how many reads were made."""

    def __init__(self, direct: bool = True) -> None:
        self.direct = direct  # False on a replicated stream: the leader answers (see the module's docstring)
        self.found: dict[tuple[int, str, str], tuple[int, int, int]] = {}  # -> (frm, nxt, upto)
        self.reads = 0
        self.fails = 0  # probes failed in a row
        self.broken = False  # they keep failing: the caller reads headers instead

    def blocked(self, p: int, lane: str, kh: str, lo: int, seq: int) -> bool | None:
        """True if an event of ``kh`` in ``lane`` of ``p`` lies in ``(lo, seq)``, False if none, None if unknown
        (``lo``: every message of the lane at or below it is known otherwise)."""
        r = self.found.get((p, lane, kh))
        if r is None:
            return None
        frm, nxt, upto = r
        if frm > lo + 1 or nxt <= lo:  # asked from too far on, or its answer has been pulled since: ask again
            return None
        if nxt < seq:
            return True
        return False if nxt < NONE or upto >= seq - 1 else None

    async def probe(self, jsm: Any, stream: str, p: int, lane: str, kh: str, lo: int, horizon: int) -> None:
        """Ask for the first event of ``kh`` in ``lane`` of ``p`` after ``lo`` (``horizon``: stored before it)."""
        from nats.js.errors import NotFoundError

        self.reads += 1
        try:
            filt = subjects.key_filter(p, lane, kh)
            m = await jsm.get_msg(stream, seq=lo + 1, subject=filt, direct=self.direct, next=True)
            nxt = int(m.seq)
        except NotFoundError:
            nxt = NONE
        except Exception:  # unknown: the event waits for the next fetch; headers are read instead if it goes on
            self.fails += 1
            self.broken = self.fails >= FAILS  # a stream without direct gets, say (no responders)
            return
        self.fails = 0
        if len(self.found) >= KEEP:
            self.found.clear()
        self.found[(p, lane, kh)] = (lo + 1, nxt, max(horizon, nxt if nxt < NONE else 0))

    def forget(self, p: int) -> None:
        for k in [k for k in self.found if k[0] == p]:
            del self.found[k]


def unkeyed_above(msgs: list[Any], mark: int) -> int:
    """The highest sequence of a pulled event without its key token above the stream's ``mark`` (0: none).

    Such an event was published by an older poetctl after the mark (:func:`.setup.mark_key_subjects`)."""
    bad = [int(m.metadata.sequence.stream) for m in msgs if ".~" not in m.subject]
    top = max(bad, default=0)
    if top <= mark:
        return 0
    from ...daemon import log

    log.warning(
        "an event without a key subject above the stream's mark: an older poetctl publishes; "
        "reading headers for key order from now on",
        seq=top,
    )
    return top


def raise_mark_soon(t: Any) -> None:
    """Raise the stream's key-subject mark to its end (on the link's loop, not waited for): daemons started
    later read headers below it too."""
    import asyncio

    from .setup import raise_key_mark

    async def go() -> None:
        try:
            info = await t.link.jsm.stream_info(t.settings.stream)
            await raise_key_mark(t.link, t.settings.stream, int(info.state.last_seq or 0))
        except Exception:  # the next daemon finds such an event again
            pass

    t.link.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(go()))


__all__ = ["NONE", "KeyProbes", "raise_mark_soon", "unkeyed_above"]
