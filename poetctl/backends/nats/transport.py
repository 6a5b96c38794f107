"""NATS JetStream behind the transport contract (:mod:`poetctl.transport`): publishing and queries.

Where things live (names from :class:`~.settings.NatsSettings`):

* the event: stream ``POET``, subject ``poet.p.<partition><lane>.~<key hash>.<topic tail>``,
  ``Nats-Msg-Id`` = the event id (a retried group is deduplicated by the
  server within the duplicate window);
* its state: KV ``POET_STATE`` under the event id: ``{"s": state, "seq":
  stream sequence, "p": partition, "ts": timestamp, "rec": handling record,
  "info": dead letter / quarantine description}``, written only when the
  stream and its partition consumer cannot tell (:mod:`.derive`). Keyed ids
  get one at publish (header ``Poet-Kv``) and are checked there before
  publishing, so a keyed id older than the duplicate window is still a
  no-op and a quarantined one is refused. A fresh (unkeyed) id is published
  alone: its state is derived from the consumer's ack floor.
* dead letters: stream ``POET_DEAD`` (``poet.dead.<topic tail>``, headers
  Poet-Error / Poet-Attempts / Poet-Reason / Poet-Traceback, body = the
  original event); quarantined input: stream ``POET_CORRUPT``.

The consumer side is :mod:`.consumer`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ...errors import BackendUnavailable, InvalidData
from ...event import Event
from ...partition import KeyFunction, key_function
from ...transport import EVENT_STATES, Outgoing, Quarantined, Query, State, Stored
from ..memory import decode
from . import derive, subjects, tally
from .creates import create_all
from .fastpub import FastPublisher, event_headers, header_dict, plain
from .link import Link
from .retry import RUN_TIMEOUT, confirmed_all, retrying, transient
from .settings import NatsSettings
from .subjects import kv_key

if TYPE_CHECKING:
    from ...limits import Limits
    from .consumer import NatsConsumer


def dumps(d: dict[str, Any]) -> bytes:
    import orjson  # a core dependency; several times faster than json on the per-event records

    return orjson.dumps(d)


class NatsTransport:
    """Publishing, queries and pruning on JetStream; hands out :class:`~.consumer.NatsConsumer`.

    ``clock`` decides what is due (records' ``not_before``); NATS's own timers
    (AckWait, lease expiry) run on real time. ``setup`` creates/updates the
    streams and buckets first (tests; production runs ``poetctl nats setup``).
    ``limits``: the ``[limits]`` :meth:`admit` keeps (``cli.mode.nats_transport`` sets them from the config).
    """

    limits: Limits | None = None

    def __init__(
        self,
        settings: NatsSettings,
        *,
        clock: Callable[[], float] = time.time,
        key_of: KeyFunction | None = None,
        setup: bool = False,
        probe_every: float = 0.25,
        hold_idle: float | None = None,
        priority_shares: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.shares = priority_shares  # [daemon] priority_shares: the classes' shares of a fetch (.lanes)
        self.clock = clock
        self.key_of = key_of or key_function()
        self.probe_every = probe_every
        self.hold_idle = hold_idle  # seconds an idle partition's lease is kept (default lease_ttl / 2)
        self.link = Link(settings)
        self._consumers: weakref.WeakSet[NatsConsumer] = weakref.WeakSet()
        self._fast: FastPublisher | None = None  # made on the link's loop at the first publish
        self._lock = threading.Lock()
        self._closed = False
        # The stream is replicated (R3): an ack a leader received can be lost with it before it replicates,
        # so every ack is preceded by a completion entry that a quorum confirmed (see NatsConsumer.ack).
        self.replicated = False
        try:
            if setup:
                from .setup import setup as do_setup

                do_setup(self.link, settings)
            self.state_kv, self.lease_kv = self.link.run(retrying(self._bind), RUN_TIMEOUT)
        except BaseException:
            self.link.close()
            raise

    async def _bind(self) -> tuple[Any, Any]:
        from nats.js.errors import BucketNotFoundError, NotFoundError

        try:
            info = await self.link.jsm.stream_info(self.settings.stream)
            self.replicated = int(info.config.num_replicas or 1) > 1
            return (
                await self.link.js.key_value(self.settings.state_bucket),
                await self.link.js.key_value(self.settings.lease_bucket),
            )
        except (BucketNotFoundError, NotFoundError):
            raise BackendUnavailable(
                f"NATS at {self.settings.shown_servers()} has no stream {self.settings.stream} or its KV buckets: "
                "run 'poetctl nats setup' first"
            ) from None

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        if not items:
            return []
        added = self.link.run(self._publish(items), timeout=RUN_TIMEOUT)
        if any(added):
            for c in list(self._consumers):
                c.interrupt()
        return added

    def admit(self, items: Sequence[Outgoing], wait: float, partial: bool = False) -> int:
        """How many leading ``items`` fit the ``[limits]`` now (waiting up to ``wait`` s); raises Backpressure."""
        from .limits import admit

        return admit(self, items, wait, partial)

    async def _publish(self, items: Sequence[Outgoing]) -> list[bool]:
        keyed = sorted({it.event.id for it in items if it.keyed})
        states = await asyncio.gather(*(retrying(partial(self._state, i)) for i in keyed)) if keyed else []
        known = dict(zip(keyed, states, strict=True))
        for i, st in known.items():
            if st is not None and st.get("s") == State.CORRUPT:
                info = st.get("info") or {}
                raise Quarantined(
                    f"id {i} exists in quarantine (reason: {info.get('reason')}: {info.get('detail')}); "
                    "nothing was written. Requeue it once fixed, or emit under another id"
                )
        n = self.settings.partitions
        plan: list[tuple[int, Outgoing, int] | None] = []
        seen: set[str] = set()
        khash: dict[int, str] = {}  # position -> Poet-Key (the hash of its partition key)
        for it in items:
            i = it.event.id
            if i in seen or known.get(i) is not None:
                plan.append(None)
                continue
            seen.add(i)
            key = self.key_of(it.event)
            khash[len(plan)] = subjects.key_hash(key)
            plan.append((len(plan), it, subjects.partition_of(key, n)))
        todo = [p for p in plan if p is not None]
        try:
            acks = await self._send_all(todo, khash)
            result = [False] * len(items)
            # Keyed ids get a state entry, pipelined too; each is a create (expected last sequence 0): a
            # consumer that got there first (or a retried group) has newer state, and its refusal is ignored.
            # A publish repeated after a lost PubAck is a "duplicate" of itself: its entry is made too,
            # and it counts as added unless the entry existed (an id published before this call).
            # A fresh id needs no entry (its state is derived, :mod:`.derive`): a duplicate of it can only
            # be this call's own repeat, so it counts as added.
            prefix = f"$KV.{self.settings.state_bucket}."
            made: list[tuple[int, str, bytes, bool]] = []
            for pos, it, part in todo:
                ack, repeated = acks[pos]
                if ack.duplicate and not repeated:
                    continue  # the id was published before (within the duplicate window): not added
                result[pos] = not ack.duplicate or not it.keyed
                if not it.keyed:
                    continue
                st = {"s": State.PENDING.value, "seq": ack.seq, "p": part, "ts": it.event.timestamp}
                made.append((pos, prefix + kv_key(it.event.id), dumps(st), ack.duplicate))
            created = await self._create_all([(k, v) for _, k, v, _ in made]) if made else []
            for (pos, _, _, dup), ok in zip(made, created, strict=True):
                if dup:
                    result[pos] = ok  # a repeat after a lost PubAck: added by this call if the entry is new
        except Exception as exc:
            if isinstance(exc, Quarantined):
                raise
            raise BackendUnavailable(
                f"publishing to NATS failed ({type(exc).__name__}: {exc}); retry the group"
            ) from None
        return result

    async def _send_all(
        self, todo: list[tuple[int, Outgoing, int]], khash: dict[int, str]
    ) -> dict[int, tuple[Any, bool]]:
        """Publish every planned event (pipelined: all go out before the first PubAck is awaited).

        Through a server loss (:mod:`.retry`) the events whose PubAck failed or did not come are published
        again (same ``Nats-Msg-Id``: the server drops a copy it has). Per position: (PubAck, repeated).
        """
        js = self.link.js
        fast = self._fast
        if fast is None:
            fast = self._fast = FastPublisher(self.link.nc)
        out: dict[int, tuple[Any, bool]] = {}
        # Subject and header bytes, made once (a repeat after a server loss reuses them); None: not plain
        # ASCII, so through nats-py's publish_async (which checks and encodes them itself).
        wire: dict[int, tuple[bytes, bytes] | None] = {}
        plain_topic: dict[str, bool] = {}  # a group has few topics: each checked once
        for pos, it, part in todo:
            lane = subjects.lane_of(it.event.priority)  # the priority lane (:mod:`.lanes`)
            khs = khash[pos]
            made = subjects.event_subject(it.event.topic, part, lane, khs).encode()
            ok = plain_topic.get(it.event.topic)
            if ok is None:  # the key token is hex: the subject is plain if the topic's part is
                ok = plain_topic[it.event.topic] = plain(made)
            subj = made if ok else None
            eid = it.event.id.encode()
            kh = khs.encode()
            wire[pos] = (subj, event_headers(eid, it.keyed, kh)) if subj is not None and plain(eid) else None
        loop = asyncio.get_running_loop()
        from .retry import OUTAGE

        end = loop.time() + OUTAGE
        delay = 0.05
        left = todo
        repeated = False
        while left:
            futs: list[Any] = []
            failure: BaseException | None = None
            for pos, it, part in left:
                w = wire[pos]
                try:
                    if w is not None:
                        futs.append(await fast.publish(w[0], it.data, w[1]))
                    else:
                        topic = subjects.event_subject(
                            it.event.topic, part, subjects.lane_of(it.event.priority), khash[pos]
                        )
                        hdrs = header_dict(it.event.id, it.keyed, khash[pos])
                        futs.append(await js.publish_async(topic, it.data, headers=hdrs))
                except Exception as exc:  # reconnecting with a full buffer, stalled: the rest waits
                    failure = exc
                    break
            await fast.kick()
            results = await confirmed_all(futs)
            if any(isinstance(r, TimeoutError) for r in results):
                fast.forget_done()
            again = []
            for (pos, it, part), r in zip(left, [*results, *[failure] * (len(left) - len(futs))], strict=True):
                if isinstance(r, BaseException) or r is None:
                    failure = failure or r
                    again.append((pos, it, part))
                else:
                    out[pos] = (r, repeated)
            left = again
            if left:
                assert failure is not None
                if not transient(failure) or loop.time() + delay > end:
                    raise failure
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                repeated = True
        return out

    async def _create_all(self, made: list[tuple[str, bytes]]) -> list[bool]:
        """Create the state entries (:func:`.creates.create_all`); per entry: made by this call."""
        return await create_all(self.link.js, made)

    async def _state(self, event_id: str) -> dict[str, Any] | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            e = await self.state_kv.get(kv_key(event_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not e.value:
            return None
        d: dict[str, Any] = json.loads(e.value)
        return d

    def raw_state(self, event_id: str) -> dict[str, Any] | None:
        """The KV state entry of an id, or the state derived for it (``"derived": True``; :mod:`.derive`)."""
        self._settle_local()
        return self.link.run(self._lookup(event_id))[0]

    async def _lookup(self, event_id: str) -> tuple[dict[str, Any] | None, Event | None]:
        """(state entry or derived state, the event if it was read to derive it)."""
        st = await self._state(event_id)
        if st is not None:
            return st, None
        where = await derive.locate(self, event_id)
        if where is None:
            return None, None
        seq, lane, ev = where
        fl = await derive.floors(self)
        s = derive.derived(seq, lane, fl, self._local_states().get(event_id))
        p = int(lane.rstrip("hl")) if lane else None
        out: dict[str, Any] = {"s": s.value, "seq": seq, "p": p, "derived": True}
        if ev is not None:
            out["ts"] = ev.timestamp
        return out, ev

    def _settle_local(self) -> None:
        """This process's consumers send acks without waiting: a query first waits for them (read your writes)."""
        for c in list(self._consumers):
            c.settle()

    def storage(self) -> Any:
        """The handlers' stores in KV (:class:`~.storage.NatsStorage`); the router asks for them."""
        from .storage import NatsStorage

        return NatsStorage(self, self.clock)

    # -- consumers ---------------------------------------------------------------------------
    def consumer(self, name: str | None = None) -> NatsConsumer:
        from .consumer import NatsConsumer

        c = NatsConsumer(self, name)
        self._consumers.add(c)
        return c

    def _local_lease(self, event_id: str) -> bool:
        return any(c.holds(event_id) for c in list(self._consumers))

    def _local_states(self) -> dict[str, State]:
        """What this process's consumers hold: leased ids (inflight) and pulled ones not handed out (pending)."""
        out: dict[str, State] = {}
        for c in list(self._consumers):
            out.update(c.local_states())
        return out

    # -- queries -------------------------------------------------------------------------------
    def _state_enum(self, event_id: str, st: dict[str, Any] | None) -> State | None:
        if st is None:
            return None
        s = State(st["s"])
        if s is State.PENDING and self._local_lease(event_id):
            return State.INFLIGHT
        return s

    def state_of(self, event_id: str) -> State | None:
        return self._state_enum(event_id, self.raw_state(event_id))

    def get(self, event_id: str) -> Stored | None:
        self._settle_local()
        st, ev = self.link.run(self._lookup(event_id))
        state = self._state_enum(event_id, st)
        if st is None or state is None:
            return None
        if ev is None and "seq" in st and not st.get("derived"):
            ev = self.link.run(self._load(st, event_id))
        info = st.get("info")
        return Stored(event_id, state, ev, dict(info) if info else None)

    async def _load(self, st: dict[str, Any], event_id: str) -> Event | None:
        from nats.js.errors import NotFoundError

        try:
            raw = await self.link.jsm.get_msg(st.get("stream", self.settings.stream), seq=int(st["seq"]))
        except NotFoundError:
            return None
        try:
            return decode(raw.data or b"", event_id)
        except InvalidData:
            return None

    def select(self, query: Query, limit: int | None = None) -> Iterator[Stored]:
        self._settle_local()

        async def go() -> tuple[list[tuple[int, str | None, Event]], dict[str, dict[str, Any]], derive.Floors]:
            found = await self._scan(query)
            states = dict(await self._all_states()) if found else {}
            return found, states, (await derive.floors(self) if found else {})

        found, states, fl = self.link.run(go(), timeout=300)
        local = self._local_states()
        n = 0
        for seq, p, ev in sorted(found, key=lambda x: x[0], reverse=True):
            if limit is not None and n >= limit:
                return
            st = states.get(kv_key(ev.id))
            if st is None:
                st = {"s": derive.derived(seq, p, fl, local.get(ev.id)).value}
            state = self._state_enum(ev.id, st)
            if state is None or state not in query.states:
                continue
            info = st.get("info") if st else None
            n += 1
            yield Stored(ev.id, state, ev, dict(info) if info else None)

    async def _scan(self, query: Query) -> list[tuple[int, str | None, Event]]:
        """Every readable event of the stream matching ``query`` (an ephemeral ordered read)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        filters = sorted({f for t in query.topics for f in subjects.pattern_filters(t)}) if query.topics else []
        if query.topics and not filters:
            return []
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        if query.since is not None:
            import datetime

            cfg.deliver_policy = DeliverPolicy.BY_START_TIME
            start = datetime.datetime.fromtimestamp(max(0.0, query.since - 300), tz=datetime.UTC)
            cfg.opt_start_time = start
        if len(filters) > 1:
            cfg.filter_subjects = filters
        elif filters:
            cfg.filter_subject = filters[0]
        info = await self.link.jsm.stream_info(self.settings.stream)
        if info.state.messages == 0:
            return []
        out: list[tuple[int, str | None, Event]] = []
        async for m in self.link.read(self.settings.stream, cfg):
            eid = (m.headers or {}).get("Poet-Id") or (m.headers or {}).get("Nats-Msg-Id") or ""
            try:
                ev = decode(m.data, eid)
            except InvalidData:
                continue
            if query.match(ev):
                out.append((m.metadata.sequence.stream, derive.lane_of_subject(m.subject), ev))
        return out

    async def _all_states(self) -> list[tuple[str, dict[str, Any]]]:
        """Every live entry of the state bucket: (key, state)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        stream = f"KV_{self.settings.state_bucket}"
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=30.0,
            mem_storage=True,
            filter_subject=f"$KV.{self.settings.state_bucket}.>",
        )
        prefix = len(f"$KV.{self.settings.state_bucket}.")
        out: list[tuple[str, dict[str, Any]]] = []
        async for m in self.link.read(stream, cfg):
            if m.data and not (m.headers or {}).get("KV-Operation"):
                out.append((m.subject[prefix:], json.loads(m.data)))
        return out

    def counts(self) -> dict[State, int]:
        self._settle_local()
        return tally.counts(self)

    def prune(self, before: float, states: Sequence[State] = (State.PROCESSED,)) -> int:
        return tally.prune(self, before, states)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.link.close()


__all__ = ["EVENT_STATES", "NatsTransport", "dumps", "kv_key"]
