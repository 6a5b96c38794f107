"""Counting and pruning over NATS: events with a KV entry by it, the rest by their derived state (:mod:`.derive`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...transport import Query, State
from . import derive

if TYPE_CHECKING:
    from .transport import NatsTransport


def kv_key(event_id: str) -> str:
    from .subjects import kv_key as key

    return key(event_id)


def counts(t: NatsTransport) -> dict[State, int]:
    """Events per state: the entries' states, and for events without one, the derived state."""
    out = dict.fromkeys(State, 0)

    async def go() -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[int, str | None, str]], derive.Floors]:
        return await t._all_states(), await derive.stream_ids(t), await derive.floors(t)

    states, ids, fl = t.link.run(go(), timeout=300)
    local = t._local_states()
    leased = {kv_key(i) for i, s in local.items() if s is State.INFLIGHT}
    for key, st in states:
        s = State(st["s"])
        out[State.INFLIGHT if s is State.PENDING and key in leased else s] += 1
    known = {k for k, _ in states}
    for seq, p, eid in ids:
        if kv_key(eid) not in known:
            out[derive.derived(seq, p, fl, local.get(eid))] += 1
    return out


def prune(t: NatsTransport, before: float, states: Sequence[State]) -> int:
    """Delete processed/dead events older than ``before``: entries (and their copies), then derived ones."""
    bad = {State.PENDING, State.INFLIGHT, State.CORRUPT} & set(states)
    if bad:  # quarantined input is kept for an operator, never deleted (as on the spool)
        raise ValueError(f"prune removes processed and dead events only, not {sorted(bad)}")
    wanted = {s.value for s in states}
    states_wanted = set(states)

    async def go() -> int:
        from nats.js.errors import NotFoundError

        n = 0
        states = await t._all_states()
        if State.PROCESSED in states_wanted:  # the derived ones: acked under the floor, no entry
            known = {k for k, _ in states}
            fl = await derive.floors(t)
            for at, p, ev in await t._scan(Query()):
                if kv_key(ev.id) in known or ev.timestamp >= before:
                    continue
                if derive.derived(at, p, fl) is State.PROCESSED:
                    try:
                        await t.link.jsm.delete_msg(t.settings.stream, at)
                    except NotFoundError:
                        continue
                    n += 1
        for key, st in states:
            if st["s"] not in wanted or float(st.get("ts", before)) >= before:
                continue
            for stream, seq in ((t.settings.stream, st.get("seq")), (st.get("dstream"), st.get("dseq"))):
                if stream and seq:
                    try:
                        await t.link.jsm.delete_msg(stream, int(seq))
                    except NotFoundError:
                        pass
            await t.state_kv.purge(key)
            n += 1
        return n

    return t.link.run(go(), timeout=600)


__all__ = ["counts", "prune"]
