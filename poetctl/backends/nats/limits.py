"""Backpressure and throttling on NATS: ``[limits]`` (:mod:`poetctl.limits`) kept by the server.

* **Pending** is what is not yet completed: for each partition's durable
  consumer ``poet-p<n>``, ``num_pending`` (not yet delivered) plus
  ``num_ack_pending`` (delivered, not yet acked: in a handler, or waiting for
  a retry). One ``CONSUMER.LIST`` request gives every partition at once;
  bytes are estimated as pending x the stream's mean message size (the
  stream's info, asked only when ``max_pending_bytes`` is set). The figure
  is cached for :data:`FRESH` seconds, so a process emitting event after
  event asks the server about once per interval, not once per event; what
  this process admits in between is added to the cached figure at once (a
  batch that fills the stream stops where it should). Other processes'
  emits in the same interval are seen at the next refresh: concurrent
  emitters may overshoot by what they emit in one interval.
* **Rates** (``[limits.sources]``): one token bucket per pattern, a JSON
  entry ``r.<hash>`` in the KV bucket ``POET_LIMITS``, changed only by a
  compare-and-set on its revision (``update(last=)``; ``create`` for a new
  one), so every process on every machine shares it. Same shape as the
  spool's (backends/fs/limits.py): ``rate`` tokens a second, a burst of one
  second's worth (at least 1), the wall clock.

:func:`admit` is what :meth:`NatsTransport.admit` calls; the emitters'
wait loop, messages and :class:`~poetctl.limits.Backpressure` (75) are the spool's.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ...limits import Backpressure, Limits, full_message

if TYPE_CHECKING:
    from ...transport import Outgoing
    from .transport import NatsTransport

FRESH = 0.25  # seconds a pending figure is reused before the server is asked again
POLL = 0.05  # seconds between looks while waiting for room
CAS_TRIES = 50  # compare-and-set attempts on one bucket before giving up (heavy contention)
HISTORY_TTL = 86400.0  # seconds an untouched bucket entry lives (a missing entry is a full bucket)


def bucket_name(t: NatsTransport) -> str:
    """The KV bucket of the rate buckets: ``<prefix>_LIMITS`` (``poetctl nats setup`` makes it)."""
    return f"{t.settings.bucket_prefix}_LIMITS"


def bucket_spec(settings: Any) -> dict[str, Any]:
    """The bucket as :func:`~.setup.bucket_specs` lists it."""
    return {
        "bucket": f"{settings.bucket_prefix}_LIMITS",
        "history": 1,
        "ttl": HISTORY_TTL,
        "replicas": settings.replicas,
    }


def rate_key(pattern: str) -> str:
    return "r." + hashlib.blake2b(pattern.encode(), digest_size=8).hexdigest()


class NatsLimits:
    """The ``[limits]`` of one transport: the cached pending figure and the shared rate buckets."""

    def __init__(self, t: NatsTransport, limits: Limits) -> None:
        self.t = t
        self.limits = limits
        self._lock = threading.Lock()
        self._at = -1e9  # monotonic time of the last measurement
        self._pending = (0, 0)
        self._kv: Any = None

    # -- pending --------------------------------------------------------------------------------
    async def _measure(self) -> tuple[int, int]:
        s = self.t.settings
        durables = {s.durable(p, lane) for p in range(s.partitions) for lane in ("", "h", "l")}  # priority lanes
        n = 0
        seen: set[str] = set()
        offset = 0
        while len(seen) < len(durables):  # a page holds 256 consumers (tails' ephemeral ones count too)
            page = await self.t.link.jsm.consumers_info(s.stream, offset or None)
            if not page:
                break  # a partition's consumer is missing (not set up): it has nothing pending
            for ci in page:
                if ci.name in durables and ci.name not in seen:
                    seen.add(ci.name)
                    n += int(ci.num_pending or 0) + int(ci.num_ack_pending or 0)
            offset += len(page)
        nbytes = 0
        if self.limits.max_pending_bytes and n:
            st = (await self.t.link.jsm.stream_info(s.stream)).state
            nbytes = n * (int(st.bytes) // int(st.messages)) if st.messages else 0
        return n, nbytes

    def pending(self, fresh: bool = False) -> tuple[int, int]:
        """``(events, bytes)`` not yet completed, at most :data:`FRESH` seconds old (``fresh``: asked now)."""
        with self._lock:
            if fresh or time.monotonic() - self._at > FRESH:
                self._pending = _asked(self.t, self._measure(), "the pending figures")
                self._at = time.monotonic()
            return self._pending

    def _added(self, items: Sequence[Outgoing]) -> None:
        with self._lock:
            n, b = self._pending
            self._pending = (n + len(items), b + sum(len(it.data) for it in items))

    # -- admission ------------------------------------------------------------------------------
    def admit(self, items: Sequence[Outgoing], wait: float, partial: bool) -> int:
        """How many leading ``items`` may be published now (waiting up to ``wait`` s); >= 1, else Backpressure."""
        lim = self.limits
        deadline = time.monotonic() + max(0.0, wait)
        n = len(items)
        if lim.max_pending or lim.max_pending_bytes:
            want = 1 if partial else len(items)
            fresh = False
            while True:
                fit, msg = self._room(items, fresh)
                if fit >= want:
                    break
                if time.monotonic() >= deadline:
                    raise Backpressure(msg, retry_after=max(1.0, wait))
                time.sleep(POLL)
                fresh = True  # waiting for room: the cached figure is what refused, ask again
            n = fit if partial else len(items)
        if lim.rates:
            n = self._tokens(items[:n], deadline, partial)
        self._added(items[:n])
        return n

    def _room(self, items: Sequence[Outgoing], fresh: bool) -> tuple[int, str]:
        lim = self.limits
        pending, nbytes = self.pending(fresh)
        fit, msg = len(items), ""
        if lim.max_pending:
            room = lim.max_pending - pending
            if room < fit:
                fit, msg = max(0, room), full_message(pending, lim.max_pending)
        if lim.max_pending_bytes:
            total = nbytes
            for i, it in enumerate(items[:fit]):
                total += len(it.data)
                if total > lim.max_pending_bytes:
                    fit, msg = i, full_message(nbytes, lim.max_pending_bytes, "bytes pending")
                    break
        return fit, msg

    # -- rate buckets ---------------------------------------------------------------------------
    def _tokens(self, items: Sequence[Outgoing], deadline: float, partial: bool) -> int:
        """A token per item from its source's bucket, in order; how many leading items got one."""
        lim = self.limits
        rules = [lim.rate_of(it.event.source) for it in items]
        while True:
            got, wait_s, src = _asked(self.t, self._take(rules, items, partial), "the [limits.sources] rate buckets")
            if got == len(items) or (partial and got > 0):
                return int(got)
            if time.monotonic() + wait_s > deadline:
                pattern = lim.rate_of(src)
                rule = f'[limits.sources] "{pattern[0]}"' if pattern else "[limits.sources]"
                raise Backpressure(
                    f"source {src!r} is over its rate limit ({rule}); retry in {wait_s:.2f} s", retry_after=wait_s
                )
            time.sleep(min(wait_s, POLL * 4))

    async def _bucket(self) -> Any:
        if self._kv is None:
            from nats.js.errors import BucketNotFoundError, NotFoundError

            try:
                self._kv = await self.t.link.js.key_value(bucket_name(self.t))
            except (BucketNotFoundError, NotFoundError):  # set up before [limits] existed: made on first use
                from nats.js.api import KeyValueConfig, StorageType

                spec = bucket_spec(self.t.settings)
                cfg = KeyValueConfig(
                    bucket=spec["bucket"],
                    history=1,
                    ttl=spec["ttl"],
                    replicas=spec["replicas"],
                    storage=StorageType.FILE,
                )
                self._kv = await self.t.link.js.create_key_value(cfg)
        return self._kv

    async def _take(self, rules: list[tuple[str, float] | None], items: Sequence[Outgoing], partial: bool) -> Any:
        """Take the tokens: per pattern, as many as its leading items need (one CAS per bucket).

        Returns ``(items covered from the start, seconds until the next token, source refused)``;
        tokens taken for items past the first refusal are given back.
        """
        need: dict[str, tuple[float, int]] = {}  # pattern -> (rate, tokens wanted)
        for r in rules:
            if r is not None:
                rate, k = need.get(r[0], (r[1], 0))
                need[r[0]] = (rate, k + 1)
        if not need:
            return len(items), 0.0, ""
        kv = await self._bucket()
        have: dict[str, tuple[int, float]] = {}  # pattern -> (tokens taken, seconds to the next token)
        for pattern, (rate, k) in need.items():
            have[pattern] = await self._cas(kv, pattern, rate, k, exact=not partial)
        covered = 0
        used: dict[str, int] = dict.fromkeys(need, 0)
        refused = ("", 0.0)
        for it, r in zip(items, rules, strict=True):
            if r is not None:
                if used[r[0]] >= have[r[0]][0]:
                    refused = (it.event.source, have[r[0]][1])
                    break
                used[r[0]] += 1
            covered += 1
        if covered < len(items) and not partial:
            covered, used = 0, dict.fromkeys(need, 0)
        for pattern, (taken, _) in have.items():
            if taken > used[pattern]:  # give back what the refused tail did not use
                await self._cas(kv, pattern, need[pattern][0], used[pattern] - taken, exact=False)
        return covered, refused[1], refused[0]

    async def _cas(self, kv: Any, pattern: str, rate: float, want: int, *, exact: bool) -> tuple[int, float]:
        """Take ``want`` tokens (a negative ``want`` gives tokens back); ``exact``: all or none.

        Returns (tokens taken, seconds until one more is due). A refusal is recorded in the entry
        (``refused``, ``refused_at``) for ``status``.
        """
        from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

        key = rate_key(pattern)
        burst = max(1.0, rate)
        for _ in range(CAS_TRIES):
            now = time.time()
            try:
                e = await kv.get(key)
                d = orjson.loads(e.value) if e.value else {}
                rev: int | None = e.revision
            except (KeyNotFoundError, KeyDeletedError):
                d, rev = {}, None
            tokens = float(d.get("tokens", burst))
            tokens = min(burst, tokens + max(0.0, now - float(d.get("updated", now))) * rate)
            if want < 0:
                take = want
            elif exact:
                take = want if tokens >= want else 0
            else:
                take = max(0, min(want, int(tokens)))
            d.update(pattern=pattern, rate=rate, tokens=min(burst, tokens - take), updated=now)
            if take < want:
                d.update(refused_at=now, refused=int(d.get("refused", 0)) + 1)
            try:
                if rev is None:
                    await kv.create(key, orjson.dumps(d))
                else:
                    await kv.update(key, orjson.dumps(d), last=rev)
            except KeyWrongLastSequenceError:
                continue  # another process changed it first: read it again
            if take >= want:
                return take, 0.0
            # Until the refused part could be had: all of it (exact), else the next single token.
            return take, ((want - tokens) if exact else (1.0 - (tokens - take))) / rate
        return 0, 1.0 / rate  # contention beyond CAS_TRIES: refuse this time (the caller waits and retries)


def _asked(t: NatsTransport, coro: Any, what: str) -> Any:
    """Run ``coro``; a NATS failure is one line (exit 69), nothing published, never a traceback."""
    from ...errors import BackendUnavailable, PoetError

    try:
        return t.link.run(coro, timeout=60)
    except PoetError:
        raise
    except Exception as exc:
        raise BackendUnavailable(
            f"cannot read {what} from NATS at {t.settings.shown_servers()} ({type(exc).__name__}: {exc}); "
            "nothing was published"
        ) from None


_GATES: weakref.WeakKeyDictionary[Any, NatsLimits] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def gate(t: NatsTransport) -> NatsLimits | None:
    """The transport's :class:`NatsLimits`, made on first use; None without ``[limits]``."""
    lim: Limits | None = getattr(t, "limits", None)
    if lim is None or not lim.any:
        return None
    with _GATES_LOCK:
        g = _GATES.get(t)
        if g is None:
            g = _GATES[t] = NatsLimits(t, lim)
        return g


def admit(t: NatsTransport, items: Sequence[Outgoing], wait: float, partial: bool = False) -> int:
    """:meth:`NatsTransport.admit`: how many leading ``items`` fit the ``[limits]`` now (Backpressure if none)."""
    g = gate(t) if items else None
    return len(items) if g is None else g.admit(items, wait, partial)


def status(t: NatsTransport) -> dict[str, Any] | None:
    """``status``'s ``limits`` section on NATS (the spool's keys): fullness against each limit, sources throttled."""
    g = gate(t)
    if g is None:
        return None
    lim = g.limits
    n, b = g.pending(fresh=True)
    out: dict[str, Any] = {"pending": n, "max_pending": lim.max_pending or None}
    out["pending_fill"] = round(n / lim.max_pending, 4) if lim.max_pending else None
    out["pending_bytes"] = b if lim.max_pending_bytes else None
    out["max_pending_bytes"] = lim.max_pending_bytes or None
    out["bytes_fill"] = round(b / lim.max_pending_bytes, 4) if lim.max_pending_bytes else None
    out["throttled"] = _asked(t, _throttled(g), "the [limits.sources] rate buckets") if lim.rates else []
    return out


async def _throttled(g: NatsLimits, within: float = 60.0) -> list[dict[str, Any]]:
    from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError

    try:
        kv = await g.t.link.js.key_value(bucket_name(g.t))  # read only: status never makes the bucket
    except (BucketNotFoundError, NotFoundError):
        return []
    now = time.time()
    out = []
    for pattern, rate in g.limits.rates:
        try:
            d = orjson.loads((await kv.get(rate_key(pattern))).value or b"{}")
        except (KeyNotFoundError, KeyDeletedError):
            continue
        at = float(d.get("refused_at") or 0)
        if at and now - at <= within:
            out.append(
                {
                    "pattern": pattern,
                    "rate_per_s": rate,
                    "refused_total": int(d.get("refused", 0)),
                    "last_refused_s_ago": round(now - at, 1),
                }
            )
    return out


__all__ = ["FRESH", "NatsLimits", "admit", "bucket_name", "bucket_spec", "gate", "rate_key", "status"]
