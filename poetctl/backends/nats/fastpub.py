"""JetStream publishes for the emit hot path, cheaper per message than nats-py's ``publish_async``.

Same protocol, same durability: each event is one ``HPUB`` with a reply
subject, the server answers with its PubAck there, and the caller awaits
every PubAck (:func:`~.retry.confirmed_all`). What it saves per message
(the emit profile showed nats-py's own send path costing about as much as
the server): no semaphore and ``wait_for``, no per-message inbox made of a
NUID plus random hex, no header dict checked with a regex and re-encoded -
the header bytes are formatted once; replies come back on one wildcard
subscription (``<inbox>.*``) made once per connection, and are parsed with
orjson into a small :class:`Ack`.

Ids or subjects that are not plain ASCII header/subject material go through
``publish_async`` instead (the caller checks :func:`plain`).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, NamedTuple

import orjson

_PLAIN = re.compile(rb"[\x21-\x7e]{1,1024}\Z")
KICK = 128  # messages queued between flusher kicks (and a yield): the server starts on a batch early


class Ack(NamedTuple):
    """What a PubAck says (the fields poetctl reads from nats-py's ``PubAck``)."""

    stream: str
    seq: int
    duplicate: bool


def plain(*parts: bytes) -> bool:
    """True if every part is printable ASCII without spaces (safe in a subject or a header value as is)."""
    return all(_PLAIN.match(p) for p in parts)


class FastPublisher:
    """Publishes on one link's connection; use from the link's loop only."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self._prefix = b""
        self._cut = 0
        self._sub: Any = None
        self._n = 0
        self._waiting: dict[str, asyncio.Future[Ack]] = {}

    async def _ensure(self) -> None:
        if self._sub is None:
            inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(inbox + ".*", cb=self._reply)
            self._prefix = inbox.encode() + b"."
            self._cut = len(inbox) + 1

    async def _reply(self, msg: Any) -> None:
        fut = self._waiting.pop(msg.subject[self._cut :], None)
        if fut is None or fut.done():
            return  # given up on (timed out) before its PubAck came
        try:
            d = orjson.loads(msg.data)
            err = d.get("error")
            if err is not None:
                from nats.js.errors import APIError

                try:
                    APIError.from_error(err)  # raises the matching subclass (503, 400, ...), err_code kept
                except APIError as exc:
                    fut.set_exception(exc)
                return
            fut.set_result(Ack(str(d.get("stream", "")), int(d["seq"]), bool(d.get("duplicate", False))))
        except Exception as exc:  # an answer that is not a PubAck: the publish counts as failed
            fut.set_exception(exc)

    async def publish(self, subject: bytes, data: bytes, headers: bytes) -> asyncio.Future[Ack]:
        """Queue one publish (``headers``: a complete ``NATS/1.0`` header block); its PubAck's future."""
        await self._ensure()
        nc = self.nc
        if nc.is_closed:
            from nats.errors import ConnectionClosedError

            raise ConnectionClosedError
        size = len(data)
        if size > nc._max_payload:
            from nats.errors import MaxPayloadError

            raise MaxPayloadError
        if not nc.is_connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            from nats.errors import OutboundBufferLimitError

            raise OutboundBufferLimitError  # reconnecting with a full buffer: transient (see .retry)
        self._n += 1
        tok = str(self._n)
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[tok] = fut
        hl = len(headers)
        await nc._send_command(
            b"HPUB %b %b%b %d %d\r\n%b%b\r\n" % (subject, self._prefix, tok.encode(), hl, hl + size, headers, data)
        )
        if self._n % KICK == 0:
            await self.kick()
            await asyncio.sleep(0)
        return fut

    async def kick(self) -> None:
        """Hand what is queued to the connection's flusher."""
        if self.nc._flush_queue is not None and self.nc._flush_queue.empty():
            await self.nc._flush_pending()

    def forget_done(self) -> None:
        """Drop futures given up on (cancelled at a timeout): their PubAcks, if they come, are ignored."""
        for k in [k for k, f in self._waiting.items() if f.done()]:
            del self._waiting[k]


HEADER_MAX = 4096


def header_dict(event_id: str, keyed: bool, key_hash: str = "") -> dict[str, str]:
    """An event message's headers: its id (deduplication; read back by consumers and queries).

    ``Poet-Kv`` marks an event published with a state entry (a keyed id): its consumer must write the
    completion entry too, since an entry always wins over the derived state (:mod:`.derive`).
    ``Poet-Key`` is the hash of its partition key (:func:`.subjects.key_hash`): a consumer keeps a key's
    order across priority lanes from the headers alone (:mod:`.lanes`).
    """
    out = {"Nats-Msg-Id": event_id, "Poet-Id": event_id}
    if keyed:
        out["Poet-Kv"] = "1"
    if key_hash:
        out["Poet-Key"] = key_hash
    return out


def header_value(text: str | None, limit: int = HEADER_MAX) -> str:
    """A header value: one line (JSON-escaped), bounded."""
    s = json.dumps(text or "")[1:-1]  # ASCII only: json escapes the rest
    return s if len(s) <= limit else s[: limit - 3] + "..."


def event_headers(event_id: bytes, keyed: bool, key_hash: bytes = b"") -> bytes:
    """The header block of an event message, as raw bytes (the same headers as :func:`header_dict`)."""
    kv = b"Poet-Kv: 1\r\n" if keyed else b""
    if key_hash:
        kv += b"Poet-Key: %b\r\n" % key_hash
    return b"NATS/1.0\r\nNats-Msg-Id: %b\r\nPoet-Id: %b\r\n%b\r\n" % (event_id, event_id, kv)


__all__ = ["HEADER_MAX", "Ack", "FastPublisher", "event_headers", "header_dict", "header_value", "plain"]
