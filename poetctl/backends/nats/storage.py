"""The handlers' stores (:mod:`poetctl.storage`) in JetStream KV: every daemon on every machine sees one state.

Bucket ``POET_FUNCTIONS`` (no TTL, history 5), keys:

* ``f.<fn>.cur``: the function's current state; ``f.<fn>.v.<version>``: one
  entry per version ever recorded (the history);
* ``fb.p.<id>`` / ``fb.d.<id>``: feedback pending / incorporated (processed);
  the value carries the id: ``{"id": ..., "record": ...}``;
* ``learning.head`` -> ``{"gen": g, "chunks": n}`` and ``learning.g<g>.<i>``:
  the learning document, in chunks of at most 512 KiB (a KV value is one
  NATS message, 1 MiB by default), replaced atomically by switching the head
  to a new generation;
* the learning lock is ``l.learning`` in ``POET_LEASES`` (created
  exclusively, expiring with the bucket's TTL if its holder dies; the head's
  revision is checked on save, so a holder that lost it fails rather than
  overwrites).

Names are checked against the same patterns as the spool's stores; a name
or version that is not a plain KV token is hex-encoded in the key. Values
are parsed strictly (:func:`~poetctl.event.parse_json`): a damaged one is
:class:`~poetctl.errors.InvalidData` (65), never replaced silently.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import orjson

from ...errors import BackendUnavailable, InputMissing, InvalidData
from ...event import parse_json
from ...ids import EVENT_ID_RE, FUNCTION_NAME_RE, VERSION_RE, check_path_part
from ...storage import LEARNING_SECTIONS, MAX_LEARNING_BYTES, parse_learning
from .retry import RUN_TIMEOUT, retrying

_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,200}\Z")
CHUNK = 512 * 1024
LOCK_KEY = "l.learning"


def token(name: str) -> str:
    """A KV key token for ``name``: itself when plain, else ``h`` + hex (``.``, ``+``, ``:`` are not key tokens)."""
    return name if _PLAIN.match(name) and not name.startswith("h") else "h" + name.encode().hex()


def _loads(data: bytes, where: str) -> Any:
    return parse_json(data, where=where)


class _Kv:
    """The bucket through the transport's link: get / put / create / delete / list, synchronously."""

    def __init__(self, t: Any) -> None:
        self.t = t
        self.bucket = t.settings.function_bucket
        self.kv: Any = t.link.run(retrying(partial(t.link.js.key_value, self.bucket)), RUN_TIMEOUT)

    def get(self, key: str) -> tuple[bytes, int] | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        async def go() -> tuple[bytes, int] | None:
            try:
                e = await self.kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                return None
            return (e.value, int(e.revision)) if e.value else None

        return self.t.link.run(retrying(go), RUN_TIMEOUT)  # type: ignore[no-any-return]

    def put(self, key: str, value: bytes) -> int:
        return int(self.t.link.run(retrying(partial(self.kv.put, key, value)), RUN_TIMEOUT))

    def create(self, key: str, value: bytes) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        async def go() -> bool:
            try:
                await self.kv.create(key, value)
            except KeyWrongLastSequenceError:
                return False
            return True

        return bool(self.t.link.run(go()))

    def update(self, key: str, value: bytes, last: int) -> int:
        return int(self.t.link.run(self.kv.update(key, value, last=last)))

    def purge(self, key: str) -> None:
        self.t.link.run(retrying(partial(self.kv.purge, key)), RUN_TIMEOUT)

    def values(self, prefix: str) -> list[tuple[str, bytes]]:
        """(key, value) of every live key under ``prefix`` (``prefix`` ends with ``.``)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=30.0,
            mem_storage=True,
            filter_subject=f"$KV.{self.bucket}.{prefix}>",
        )
        head = len(f"$KV.{self.bucket}.")

        async def go() -> list[tuple[str, bytes]]:
            out = []
            async for m in self.t.link.read(f"KV_{self.bucket}", cfg):
                if m.data and not (m.headers or {}).get("KV-Operation"):
                    out.append((m.subject[head:], m.data))
            return out

        return self.t.link.run(go(), timeout=300)  # type: ignore[no-any-return]


def _updated_at(record: dict[str, Any]) -> float | None:
    t = record.get("updated_at")
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


class KvFunctionState:
    """:class:`poetctl.storage.FunctionState` in KV; ``clock`` stamps ``updated_at``."""

    def __init__(self, kv: _Kv, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock

    def _read(self, key: str) -> dict[str, Any] | None:
        got = self.kv.get(key)
        if got is None:
            return None
        doc = _loads(got[0], f"{self.kv.bucket}/{key}")
        if not isinstance(doc, dict):
            raise InvalidData("not a JSON object", where=f"{self.kv.bucket}/{key}")
        return doc

    def current(self, function_name: str) -> dict[str, Any] | None:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        return self._read(f"f.{token(function_name)}.cur")

    def history(self, function_name: str) -> list[dict[str, Any]]:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        out = []
        for key, data in self.kv.values(f"f.{token(function_name)}.v."):
            try:
                doc = _loads(data, f"{self.kv.bucket}/{key}")
            except InvalidData:
                continue  # damaged records are left out (as on the spool)
            if isinstance(doc, dict):
                out.append(doc)
        out.sort(key=lambda r: (_updated_at(r) is None, _updated_at(r) or 0.0, str(r.get("version"))))
        return out

    def functions(self) -> list[str]:
        names = set()
        for key, _ in self.kv.values("f."):
            parts = key.split(".")
            if len(parts) == 3 and parts[2] == "cur" and _PLAIN.match(parts[1]):
                names.add(parts[1])
        return sorted(names)

    def record_version(
        self,
        function_name: str,
        version: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        previous_version: str | None = None,
        at: float | None = None,
    ) -> dict[str, Any]:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        check_path_part("version", version, VERSION_RE)
        key = f"f.{token(function_name)}.v.{token(version)}"
        prev = self._read(key)
        now = self.clock() if at is None else at
        state = {
            "function_name": function_name,
            "version": version,
            "previous_version": previous_version,
            # The first record wins (idempotent); its time is the event's when given (state rebuilt from
            # events is then the same), else now.
            "updated_at": prev.get("updated_at", now) if prev is not None else now,
            "event_id": event_id,
            **data,
        }
        raw = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
        self.kv.put(key, raw)  # the history first: a crash in between leaves current one version behind
        self.kv.put(f"f.{token(function_name)}.cur", raw)
        return orjson.loads(raw)  # type: ignore[no-any-return]

    def require(self, function_name: str) -> dict[str, Any]:
        cur = self.current(function_name)
        if cur is None:
            raise InputMissing(f"no state for function {function_name!r}")
        return cur


class KvFeedbackRecords:
    """:class:`poetctl.storage.FeedbackRecords` in KV (``fb.p.<id>`` pending, ``fb.d.<id>`` processed)."""

    def __init__(self, kv: _Kv) -> None:
        self.kv = kv

    def add(self, feedback_id: str, record: dict[str, Any]) -> bool:
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        if self.kv.get(f"fb.d.{token(feedback_id)}") is not None:
            return False
        return self.kv.create(f"fb.p.{token(feedback_id)}", orjson.dumps({"id": feedback_id, "record": record}))

    def _list(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        out = []
        for key, data in self.kv.values(prefix):
            try:
                doc = _loads(data, f"{self.kv.bucket}/{key}")
            except InvalidData:
                continue  # unreadable ones skipped
            if isinstance(doc, dict) and isinstance(doc.get("id"), str) and isinstance(doc.get("record"), dict):
                out.append((doc["id"], doc["record"]))
        return iter(sorted(out, key=lambda x: x[0]))

    def pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._list("fb.p.")

    def processed(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._list("fb.d.")

    def mark_processed(self, feedback_id: str) -> bool:
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        got = self.kv.get(f"fb.p.{token(feedback_id)}")
        if got is None:
            return False
        self.kv.put(f"fb.d.{token(feedback_id)}", got[0])  # processed first: a crash in between leaves both
        self.kv.purge(f"fb.p.{token(feedback_id)}")
        return True


class KvLearningState:
    """:class:`poetctl.storage.LearningState` in KV, chunked; the lock is a lease (see the module docstring)."""

    def __init__(self, kv: _Kv, lease_kv: Any, owner: str, wait: float = 120.0) -> None:
        self.kv = kv
        self.lease_kv = lease_kv
        self.owner = owner
        self.wait = wait
        self._thread_lock = threading.Lock()
        self._head_rev: int | None = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            link = self.kv.t.link
            deadline = time.monotonic() + self.wait
            rev = None
            while rev is None:
                rev = link.run(self._try_lock())
                if rev is None:
                    if time.monotonic() > deadline:
                        raise BackendUnavailable(f"the learning lock ({LOCK_KEY}) stayed taken for {self.wait:g} s")
                    time.sleep(0.05)
            try:
                yield
            finally:
                self._head_rev = None
                try:
                    link.run(self.lease_kv.delete(LOCK_KEY, last=rev))
                except Exception:  # it expired and someone else holds it: not ours to free
                    pass

    async def _try_lock(self) -> int | None:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        try:
            return int(await self.lease_kv.create(LOCK_KEY, self.owner.encode()))
        except (KeyWrongLastSequenceError, KeyNotFoundError):  # held; or it expired mid-create: try again
            return None

    def locked(self) -> Any:
        return self._locked()

    def load(self) -> dict[str, Any]:
        where = f"{self.kv.bucket}/learning"
        head = self.kv.get("learning.head")
        if head is None:
            self._head_rev = 0
            data: dict[str, Any] = {}
        else:
            self._head_rev = head[1]
            h = _loads(head[0], where + ".head")
            parts = []
            for i in range(int(h.get("chunks", 0)) if isinstance(h, dict) else 0):
                got = self.kv.get(f"learning.g{int(h['gen'])}.{i}")
                if got is None:
                    raise InvalidData(f"chunk {i} of generation {h['gen']} is missing", where=where)
                parts.append(got[0])
            raw = b"".join(parts)
            if len(raw) > MAX_LEARNING_BYTES:
                raise InvalidData(f"larger than {MAX_LEARNING_BYTES} bytes", where=where)
            data = parse_learning(raw, where)
        for k in LEARNING_SECTIONS:
            data.setdefault(k, {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        head = self.kv.get("learning.head")
        old = _loads(head[0], "learning.head") if head is not None else None
        gen = int(old["gen"]) + 1 if isinstance(old, dict) and isinstance(old.get("gen"), int) else 1
        chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]
        for i, c in enumerate(chunks):
            self.kv.put(f"learning.g{gen}.{i}", c)
        new_head = orjson.dumps({"gen": gen, "chunks": len(chunks)})
        expected = self._head_rev if self._head_rev is not None else (head[1] if head is not None else 0)
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            self.kv.update("learning.head", new_head, last=expected)
        except KeyWrongLastSequenceError:
            raise BackendUnavailable(
                "the learning state changed while this daemon held its lock (the lock expired?); retry"
            ) from None
        self._head_rev = None
        if isinstance(old, dict) and isinstance(old.get("gen"), int):
            for i in range(int(old.get("chunks", 0))):
                self.kv.purge(f"learning.g{old['gen']}.{i}")


class NatsStorage:
    """The three stores (:class:`poetctl.storage.Storage`) in JetStream KV."""

    def __init__(self, transport: Any, clock: Callable[[], float] = time.time) -> None:
        kv = _Kv(transport)
        self.state = KvFunctionState(kv, clock)
        self.feedback = KvFeedbackRecords(kv)
        import os
        import socket

        self.learning = KvLearningState(kv, transport.lease_kv, f"{socket.gethostname()}-{os.getpid()}")


__all__ = ["KvFeedbackRecords", "KvFunctionState", "KvLearningState", "NatsStorage", "token"]
