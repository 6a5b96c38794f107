"""``poetctl nats setup``: the streams, KV buckets and consumers poetctl needs, created or updated.

Idempotent: what exists with the wanted settings is left alone; what
differs is updated (or, for a setting NATS cannot change in place such as
storage, reported); ``dry_run`` only reports the difference.

What it makes (names from :class:`~.settings.NatsSettings`):

* stream ``POET``: ``poet.p.>`` (events, one subject prefix per partition),
  file storage, ``max_age`` = retention, duplicate window;
* stream ``POET_DEAD``: ``poet.dead.>`` (dead letters, kept until purged);
* stream ``POET_CORRUPT``: ``poet.corrupt.>`` (quarantined input, kept);
* KV ``POET_STATE`` (event state and handling records, completion records
  included), ``POET_LEASES`` (partition leases and daemon membership,
  entries expire after ``lease_ttl``), ``POET_FUNCTIONS`` (function state);
* durable pull consumers ``poet-p<n>`` on ``POET``, one per partition, and one per priority lane
  (``poet-p<n>h`` high, ``poet-p<n>l`` low; added to a stream set up before them).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import subjects
from .link import Link
from .settings import NatsSettings

NS = 1_000_000_000
# JetStream's answers while a cluster is still forming (a peer not yet known or back, no meta leader
# yet): "no suitable peers for placement" (10005) and "JetStream system temporarily unavailable"
# (10008), or no responders (503). A setup run right after the servers start waits them out.
TRANSIENT = frozenset({10005, 10008})
PATIENCE = 60.0  # seconds a change keeps being retried while the cluster forms


@dataclass
class Change:
    """One difference: ``kind`` create/update/keep, what, and the fields that differ (old -> new)."""

    kind: str
    what: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def line(self) -> str:
        if self.kind == "keep":
            return f"  = {self.what}"
        if self.kind == "create":
            return f"  + {self.what}"
        diff = ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in sorted(self.fields.items()))
        return f"  ~ {self.what} ({diff})"


def _show(v: Any) -> str:
    return str(v)


def stream_specs(s: NatsSettings) -> list[dict[str, Any]]:
    """The wanted streams (KV buckets are streams too: KV_<bucket>)."""
    common = {"storage": "file", "num_replicas": s.replicas, "duplicate_window": s.duplicate_window}
    return [
        {"name": s.stream, "subjects": [f"{subjects.EVENTS}.>"], "max_age": s.max_age, "allow_direct": True, **common},
        {"name": s.dead_stream, "subjects": [f"{subjects.DEAD}.>"], "max_age": 0.0, "allow_direct": True, **common},
        {"name": s.corrupt_stream, "subjects": [f"{subjects.CORRUPT}.>"], "max_age": 0.0, **common},
    ]


def bucket_specs(s: NatsSettings) -> list[dict[str, Any]]:
    from .limits import bucket_spec

    return [
        {"bucket": s.state_bucket, "history": 1, "ttl": s.max_age, "replicas": s.replicas},
        {"bucket": s.lease_bucket, "history": 1, "ttl": s.lease_ttl, "replicas": s.replicas},
        {"bucket": s.function_bucket, "history": 5, "ttl": 0.0, "replicas": s.replicas},
        bucket_spec(s),  # the [limits.sources] rate buckets
    ]


def lane_specs(s: NatsSettings) -> list[tuple[int, str, dict[str, Any]]]:
    """(partition, lane, spec) of every durable: one per partition and priority lane (normal, high, low)."""
    return [
        (
            p,
            lane,
            {
                "durable_name": s.durable(p, lane),
                "filter_subject": subjects.partition_filter(p, lane),
                "ack_wait": s.ack_wait,
                "max_ack_pending": 20_000,
            },
        )
        for lane in subjects.LANES
        for p in range(s.partitions)
    ]


def consumer_specs(s: NatsSettings) -> list[dict[str, Any]]:
    return [spec for _, _, spec in lane_specs(s)]


def _num(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) else v


def _diff(have: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in want.items():
        h = have.get(k)
        if isinstance(v, float) or isinstance(h, float):
            if abs(float(h or 0) - float(v or 0)) > 0.001:
                out[k] = (_num(h), _num(v))
        elif k == "subjects":
            if sorted(h or []) != sorted(v):
                out[k] = (h, v)
        elif h != v:
            out[k] = (h, v)
    return out


async def _stream_have(link: Link, name: str) -> dict[str, Any] | None:
    from nats.js.errors import NotFoundError

    try:
        info = await link.jsm.stream_info(name)
    except NotFoundError:
        return None
    c = info.config
    return {
        "subjects": list(c.subjects or []),
        "storage": str(getattr(c.storage, "value", c.storage)),
        "num_replicas": c.num_replicas,
        "max_age": float(c.max_age or 0),
        "duplicate_window": float(c.duplicate_window or 0),
        "allow_direct": bool(c.allow_direct),
    }


async def _plan(link: Link, s: NatsSettings) -> list[tuple[Change, str, dict[str, Any]]]:
    from nats.js.errors import NotFoundError

    plan: list[tuple[Change, str, dict[str, Any]]] = []
    for spec in stream_specs(s):
        have = await _stream_have(link, spec["name"])
        want = {k: v for k, v in spec.items() if k != "name"}
        if have is None:
            plan.append((Change("create", f"stream {spec['name']}"), "stream", spec))
        else:
            d = _diff(have, want)
            plan.append((Change("update" if d else "keep", f"stream {spec['name']}", d), "stream", spec))
    for spec in bucket_specs(s):
        have = await _stream_have(link, f"KV_{spec['bucket']}")
        if have is None:
            plan.append((Change("create", f"kv {spec['bucket']}"), "kv", spec))
        else:
            d = _diff(
                {"ttl": have["max_age"], "replicas": have["num_replicas"]},
                {"ttl": spec["ttl"], "replicas": spec["replicas"]},
            )
            plan.append((Change("update" if d else "keep", f"kv {spec['bucket']}", d), "kv", spec))
    for spec in consumer_specs(s):
        name = spec["durable_name"]
        try:
            ci = await link.jsm.consumer_info(s.stream, name)
            c = ci.config
            have = {
                "durable_name": c.durable_name,
                "filter_subject": c.filter_subject,
                "ack_wait": float(c.ack_wait or 0),
                "max_ack_pending": c.max_ack_pending,
            }
            d = _diff(have, spec)
            plan.append((Change("update" if d else "keep", f"consumer {s.stream}/{name}", d), "consumer", spec))
        except NotFoundError:
            plan.append((Change("create", f"consumer {s.stream}/{name}"), "consumer", spec))
    return plan


async def _patient(op: Callable[[], Awaitable[Any]], what: str, patience: float = PATIENCE) -> Any:
    """``op()``, retried while JetStream answers that the cluster is still forming (up to ``patience`` s)."""
    from nats.js.errors import APIError, ServiceUnavailableError

    end, delay, said = time.monotonic() + patience, 0.1, False
    while True:
        try:
            return await op()
        except APIError as exc:
            if not (isinstance(exc, ServiceUnavailableError) or exc.err_code in TRANSIENT):
                raise
            if time.monotonic() + delay > end:
                raise
            if not said:  # one line: the operator sees why setup has not finished yet
                sys.stderr.write(f"nats setup: {what}: {exc.description}; waiting for the cluster\n")
                sys.stderr.flush()
                said = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _apply(link: Link, s: NatsSettings, plan: list[tuple[Change, str, dict[str, Any]]]) -> None:
    for change, kind, spec in plan:
        if change.kind != "keep":
            # Awaited at once, so the lambda sees this iteration's values.
            await _patient(lambda: _apply_one(link, s, change, kind, spec), change.line().strip())  # noqa: B023


async def _apply_one(link: Link, s: NatsSettings, change: Change, kind: str, spec: dict[str, Any]) -> None:
    from nats.js.api import KeyValueConfig, StorageType, StreamConfig

    if kind == "stream":
        cfg = StreamConfig(
            name=spec["name"],
            subjects=spec["subjects"],
            storage=StorageType.FILE,
            num_replicas=spec["num_replicas"],
            max_age=spec["max_age"],
            duplicate_window=spec["duplicate_window"],
            allow_direct=spec.get("allow_direct", False),
        )
        if change.kind == "create":
            await link.jsm.add_stream(cfg)
        else:
            await link.jsm.update_stream(cfg)
    elif kind == "kv":
        kcfg = KeyValueConfig(
            bucket=spec["bucket"],
            history=spec["history"],
            ttl=spec["ttl"] or None,
            replicas=spec["replicas"],
            storage=StorageType.FILE,
        )
        if change.kind == "create":
            await link.js.create_key_value(kcfg)
        else:
            info = await link.jsm.stream_info(f"KV_{spec['bucket']}")
            c = info.config
            c.max_age = spec["ttl"]
            c.num_replicas = spec["replicas"]
            await link.jsm.update_stream(c)
    else:
        await link.jsm.add_consumer(s.stream, consumer_config(spec))


def consumer_config(spec: dict[str, Any], start: int | None = None) -> Any:
    """The ConsumerConfig of a durable spec (:func:`lane_specs`); ``start``: deliver from that stream sequence."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    cfg = ConsumerConfig(
        durable_name=spec["durable_name"],
        filter_subject=spec["filter_subject"],
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec["ack_wait"],
        max_deliver=-1,
        max_ack_pending=spec["max_ack_pending"],
    )
    if start is not None:
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = start
    return cfg


KEYED_FROM = "poet_key_subjects_from"  # stream metadata: no event above this sequence lacks its key token


async def mark_key_subjects(link: Link, stream: str) -> int:
    """The sequence above which every event subject has its key token (:mod:`.subjects`), marked once.

    A stream without the mark (set up before key tokens) gets its last sequence: events published by an
    older poetctl lie at or below it (:mod:`.lanes` reads their headers). A new stream gets 0. Publishers
    of an older poetctl still running after the mark break that promise (upgrade them first): a daemon that
    pulls such an event above the mark raises it to the stream's end and reads headers from then on.
    """
    info = await link.jsm.stream_info(stream)
    meta = dict(info.config.metadata or {})
    have = meta.get(KEYED_FROM, "")
    if have.isdigit():
        return int(have)
    return await raise_key_mark(link, stream, int(info.state.last_seq or 0))


async def raise_key_mark(link: Link, stream: str, seq: int) -> int:
    """Set the key-subject mark to at least ``seq`` (it never goes down); the mark now."""
    info = await link.jsm.stream_info(stream)
    cfg = info.config
    meta = dict(cfg.metadata or {})
    have = meta.get(KEYED_FROM, "")
    if have.isdigit() and int(have) >= seq:
        return int(have)
    meta[KEYED_FROM] = str(seq)
    cfg.metadata = meta
    await link.jsm.update_stream(cfg)
    return seq


async def ensure_lanes(t: Any) -> int:
    """Add the priority lanes' durables a stream set up before them lacks (idempotent; :mod:`.lanes`), and
    mark where key subjects start (:func:`mark_key_subjects`, returned).

    They deliver from the start: their subjects had no messages before the lanes existed, and any
    published since (a high event emitted before a daemon started) are delivered.
    """
    from nats.js.errors import NotFoundError

    s = t.settings
    specs = [spec for _, lane, spec in lane_specs(s) if lane]

    async def one(spec: dict[str, Any]) -> None:
        try:
            await t.link.jsm.consumer_info(s.stream, spec["durable_name"])
        except NotFoundError:
            await t.link.jsm.add_consumer(s.stream, consumer_config(spec))

    await asyncio.gather(*(one(spec) for spec in specs))
    return await mark_key_subjects(t.link, s.stream)


def setup(link: Link, s: NatsSettings, *, dry_run: bool = False) -> list[Change]:
    """Create or update everything; with ``dry_run`` only plan. The changes, in order."""

    async def go() -> list[Change]:
        plan = await _plan(link, s)
        if not dry_run:
            await _apply(link, s, plan)
            await mark_key_subjects(link, s.stream)
        return [c for c, _, _ in plan]

    from ...errors import BackendUnavailable, PoetError

    try:
        return link.run(go(), timeout=120)
    except PoetError:
        raise
    except Exception as exc:  # the server refused a change (e.g. storage type): say which, no traceback
        raise BackendUnavailable(f"nats setup failed: {type(exc).__name__}: {exc}") from None


__all__ = [
    "Change",
    "bucket_specs",
    "consumer_config",
    "consumer_specs",
    "ensure_lanes",
    "lane_specs",
    "mark_key_subjects",
    "raise_key_mark",
    "setup",
    "stream_specs",
]
