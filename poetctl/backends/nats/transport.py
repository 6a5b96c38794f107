"""NATS JetStream behind the transport contract (:mod:`poetctl.transport`): publishing and queries.

Where things live (names from :class:`~.settings.NatsSettings`):

* the event: stream ``POET``, subject ``poet.p.<partition>.<topic tail>``,
  ``Nats-Msg-Id`` = the event id (a retried group is deduplicated by the
  server within the duplicate window);
* its state: KV ``POET_STATE`` under the event id: ``{"s": state, "seq":
  stream sequence, "p": partition, "ts": timestamp, "rec": handling record,
  "info": dead letter / quarantine description}``. Keyed ids are checked
  there before publishing, so a keyed id older than the duplicate window is
  still a no-op and a quarantined one is refused.
* dead letters: stream ``POET_DEAD`` (``poet.dead.<topic tail>``, headers
  Poet-Error / Poet-Attempts / Poet-Reason / Poet-Traceback, body = the
  original event); quarantined input: stream ``POET_CORRUPT``.

The consumer side is :mod:`.consumer`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import BackendUnavailable, InvalidData
from ...event import Event
from ...partition import KeyFunction, key_function
from ...transport import EVENT_STATES, Outgoing, Quarantined, Query, State, Stored
from ..memory import decode
from . import subjects
from .link import Link
from .settings import NatsSettings

if TYPE_CHECKING:
    from .consumer import NatsConsumer

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_=-]{1,200}\Z")


def kv_key(event_id: str) -> str:
    """The KV key of an event id (ids with other characters are hex-encoded, so any id fits)."""
    if _PLAIN_KEY.match(event_id):
        return "e." + event_id
    return "h." + event_id.encode("utf-8", "surrogatepass").hex()


_EXPECT_LAST = "Nats-Expected-Last-Subject-Sequence"


def _wrong_last(exc: BaseException) -> bool:
    """A create refused because the key exists (JetStream error 10071)."""
    return getattr(exc, "err_code", None) == 10071


async def _gather_all(futs: list[Any], ignore: Callable[[BaseException], bool] | None = None) -> list[Any]:
    """Await every future; on the first error not ignored, cancel the rest (freeing publish_async slots) and raise."""
    try:
        out = await asyncio.gather(*futs, return_exceptions=ignore is not None)
    except BaseException:
        for f in futs:
            f.cancel()
        raise
    for r in out:
        if isinstance(r, BaseException) and not (ignore is not None and ignore(r)):
            raise r
    return out


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


class NatsTransport:
    """Publishing, queries and pruning on JetStream; hands out :class:`~.consumer.NatsConsumer`.

    ``clock`` decides what is due (records' ``not_before``); NATS's own timers
    (AckWait, lease expiry) run on real time. ``setup`` creates/updates the
    streams and buckets first (tests; production runs ``poetctl nats setup``).
    """

    def __init__(
        self,
        settings: NatsSettings,
        *,
        clock: Callable[[], float] = time.time,
        key_of: KeyFunction | None = None,
        setup: bool = False,
        probe_every: float = 0.25,
        hold_idle: float | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.key_of = key_of or key_function()
        self.probe_every = probe_every
        self.hold_idle = hold_idle  # seconds an idle partition's lease is kept (default lease_ttl / 2)
        self.link = Link(settings)
        self._consumers: weakref.WeakSet[NatsConsumer] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        try:
            if setup:
                from .setup import setup as do_setup

                do_setup(self.link, settings)
            self.state_kv, self.lease_kv = self.link.run(self._bind())
        except BaseException:
            self.link.close()
            raise

    async def _bind(self) -> tuple[Any, Any]:
        from nats.js.errors import BucketNotFoundError, NotFoundError

        try:
            await self.link.jsm.stream_info(self.settings.stream)
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
        added = self.link.run(self._publish(items), timeout=60)
        if any(added):
            for c in list(self._consumers):
                c.interrupt()
        return added

    async def _publish(self, items: Sequence[Outgoing]) -> list[bool]:
        keyed = sorted({it.event.id for it in items if it.keyed})
        states = await asyncio.gather(*(self._state(i) for i in keyed)) if keyed else []
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
        for it in items:
            i = it.event.id
            if i in seen or known.get(i) is not None:
                plan.append(None)
                continue
            seen.add(i)
            plan.append((len(plan), it, subjects.partition_of(self.key_of(it.event), n)))
        todo = [p for p in plan if p is not None]
        js = self.link.js
        try:
            # Pipelined: every publish goes out before the first PubAck is awaited (publish_async).
            acks = await _gather_all(
                [
                    await js.publish_async(
                        subjects.event_subject(it.event.topic, part),
                        it.data,
                        headers={"Nats-Msg-Id": it.event.id, "Poet-Id": it.event.id},
                    )
                    for _, it, part in todo
                ]
            )
        except Exception as exc:
            raise BackendUnavailable(
                f"publishing to NATS failed ({type(exc).__name__}: {exc}); retry the group"
            ) from None
        result = [False] * len(items)
        # The state entries, pipelined too; each is a create (expected last sequence 0): a consumer
        # that got there first (or a retried group) has newer state, and its refusal is ignored.
        creates = []
        prefix = f"$KV.{self.settings.state_bucket}."
        for (pos, it, part), ack in zip(todo, acks, strict=True):
            if not ack.duplicate:
                result[pos] = True
                st = {"s": State.PENDING.value, "seq": ack.seq, "p": part, "ts": it.event.timestamp}
                creates.append(
                    await js.publish_async(prefix + kv_key(it.event.id), dumps(st), headers={_EXPECT_LAST: "0"})
                )
        await _gather_all(creates, ignore=_wrong_last)
        return result

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
        """The KV state entry of an id (for tests and ``dead``/``status`` commands)."""
        self._settle_local()
        return self.link.run(self._state(event_id))

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
        st = self.raw_state(event_id)
        state = self._state_enum(event_id, st)
        if st is None or state is None:
            return None
        ev = self.link.run(self._load(st, event_id)) if "seq" in st else None
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
        found = self.link.run(self._scan(query), timeout=300)
        n = 0
        for _seq, ev in sorted(found, key=lambda x: x[0], reverse=True):
            if limit is not None and n >= limit:
                return
            st = self.raw_state(ev.id)
            state = self._state_enum(ev.id, st)
            if state is None or state not in query.states:
                continue
            info = st.get("info") if st else None
            n += 1
            yield Stored(ev.id, state, ev, dict(info) if info else None)

    async def _scan(self, query: Query) -> list[tuple[int, Event]]:
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
        out: list[tuple[int, Event]] = []
        async for m in self.link.read(self.settings.stream, cfg):
            eid = (m.headers or {}).get("Poet-Id") or (m.headers or {}).get("Nats-Msg-Id") or ""
            try:
                ev = decode(m.data, eid)
            except InvalidData:
                continue
            if query.match(ev):
                out.append((m.metadata.sequence.stream, ev))
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
        out = dict.fromkeys(State, 0)
        leased = sum(c.leased_count() for c in list(self._consumers))
        for _, st in self.link.run(self._all_states(), timeout=300):
            out[State(st["s"])] += 1
        moved = min(leased, out[State.PENDING])
        out[State.PENDING] -= moved
        out[State.INFLIGHT] += moved
        return out

    def prune(self, before: float, states: Sequence[State] = (State.PROCESSED,)) -> int:
        if State.PENDING in states or State.INFLIGHT in states:
            raise ValueError("prune removes handled events only (processed, dead, corrupt)")
        wanted = {s.value for s in states}

        async def go() -> int:
            from nats.js.errors import NotFoundError

            n = 0
            for key, st in await self._all_states():
                if st["s"] not in wanted or float(st.get("ts", before)) >= before:
                    continue
                for stream, seq in ((self.settings.stream, st.get("seq")), (st.get("dstream"), st.get("dseq"))):
                    if stream and seq:
                        try:
                            await self.link.jsm.delete_msg(stream, int(seq))
                        except NotFoundError:
                            pass
                await self.state_kv.purge(key)
                n += 1
            return n

        return self.link.run(go(), timeout=600)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.link.close()


__all__ = ["EVENT_STATES", "NatsTransport", "dumps", "kv_key"]
