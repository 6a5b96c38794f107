"""``poetctl bridge``: the seed's AitomaticEventIntegration, both ways, with a loop guard.

Inbound: messages on external subjects become POET events with the seed's
field mapping (:data:`INBOUND_DEFAULTS`):

* ``transpilation.completed`` -> ``transpilation.completed`` (source ``aitomatic.transpilation_agent``;
  ``duration`` -> ``transpilation_time_ms``);
* ``external.pagerduty.resolved`` -> ``feedback.alert_resolved`` (source ``external.pagerduty``) when the
  message names a ``poet_execution_id``; ``was_useful`` is ``resolution != "false_alarm"``;
* ``external.mlflow.experiment_tagged`` -> ``feedback.mlflow_validation`` (source ``external.mlflow``) when
  the tags hold ``poet_execution_id`` and ``drift_false_positive`` or ``drift_confirmed``; confidence 0.8.

A message body is the seed's ``{"type": ..., "data": {...}}`` (a bare data
object is accepted too). The POET event id is derived from the message
(its ``Nats-Msg-Id``, else its bytes), so a redelivered message is the same
event, which the spool keeps once. A message that cannot be mapped is
logged in one line and dropped: it never stops the others.

Outbound: a durable JetStream consumer on the event stream sends each POET
event whose type matches ``outbound_types`` to ``<outbound_prefix>.<type>``
as ``{"type": "poet.<type>", "data": {"poet_event_id", "timestamp",
"source", "correlation_id", **payload}}``, acknowledging it after the
server has it.

Loop guard: every outbound message carries ``Poet-Origin: poet``, and an
inbound message with a ``Poet-Origin`` header is ignored; every event the
bridge emits has ``metadata.origin = "bridge"``, and such events are never
sent out. Nothing bounces back, even with a subject configured both ways.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...errors import ConfigError, InvalidData, PoetError
from ...safetext import clean
from . import subjects
from ._link import AsyncLink

ORIGIN_HEADER = "Poet-Origin"
ORIGIN = "poet"
BRIDGE_ORIGIN = "bridge"

# external subject -> mapping name (see MAPPINGS)
INBOUND_DEFAULTS: dict[str, str] = {
    "transpilation.completed": "transpilation",
    "external.pagerduty.resolved": "pagerduty",
    "external.mlflow.experiment_tagged": "mlflow",
}

Mapped = tuple[str, dict[str, Any], str, str | None]  # (type, payload, source, correlation_id)


def _require(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise InvalidData(f"$.data.{key} is missing")
    return data[key]


def map_transpilation(data: Mapping[str, Any]) -> Mapped | None:
    payload = {
        "function_name": _require(data, "function_name"),
        "dana_source": _require(data, "dana_source"),
        "python_output": _require(data, "python_output"),
        "transpilation_time_ms": _require(data, "duration"),
    }
    return "transpilation.completed", payload, "aitomatic.transpilation_agent", None


def map_pagerduty(data: Mapping[str, Any]) -> Mapped | None:
    execution_id = data.get("poet_execution_id")
    if not execution_id:
        return None  # the seed ignores resolutions of alerts POET did not raise
    resolution = _require(data, "resolution")
    payload = {
        "execution_id": execution_id,
        "resolution_type": resolution,
        "resolution_time_minutes": _require(data, "duration_minutes"),
        "was_useful": resolution != "false_alarm",
    }
    corr = data.get("correlation_id")
    return "feedback.alert_resolved", payload, "external.pagerduty", corr if isinstance(corr, str) else None


def map_mlflow(data: Mapping[str, Any]) -> Mapped | None:
    tags = _require(data, "tags")
    if not isinstance(tags, Mapping):
        raise InvalidData("$.data.tags: expected an object")
    if "poet_execution_id" not in tags:
        return None
    if "drift_false_positive" in tags:
        verdict = "false_positive"
    elif "drift_confirmed" in tags:
        verdict = "confirmed_drift"
    else:
        return None
    payload = {
        "execution_id": tags["poet_execution_id"],
        "validation_type": verdict,
        "experiment_id": _require(data, "experiment_id"),
        "confidence": 0.8,  # the seed's default confidence for MLflow tags
    }
    return "feedback.mlflow_validation", payload, "external.mlflow", None


MAPPINGS: dict[str, Callable[[Mapping[str, Any]], Mapped | None]] = {
    "transpilation": map_transpilation,
    "pagerduty": map_pagerduty,
    "mlflow": map_mlflow,
}


def message_data(body: bytes) -> Mapping[str, Any]:
    """The ``data`` object of an external message (or the body itself when it has no ``data``)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidData(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidData("expected a JSON object")
    data = doc.get("data", doc)
    if not isinstance(data, dict):
        raise InvalidData("$.data: expected an object")
    return data


def inbound_id(subject: str, msg_id: str | None, body: bytes) -> str:
    """The POET event id of an inbound message: the same message always gives the same id."""
    key = f"msgid:{msg_id}" if msg_id else "sha256:" + hashlib.sha256(body).hexdigest()
    return "bridge-" + hashlib.sha256(f"{subject}\0{key}".encode()).hexdigest()[:40]


def outbound_message(event: Mapping[str, Any]) -> bytes:
    """The seed's Aitomatic form of a POET event."""
    data = {
        "poet_event_id": event["id"],
        "timestamp": event["timestamp"],
        "source": event["source"],
        "correlation_id": event.get("correlation_id"),
        **event["payload"],
    }
    return orjson.dumps({"type": f"poet.{event['type']}", "data": data})


def _check_subject_prefix(what: str, value: str) -> str:
    value = value.strip(".")
    tokens = value.split(".") if value else []
    if any(not t or any(c in t for c in " \t*>") for t in tokens):
        raise ConfigError(f"{what} {value!r}: expected dot-separated tokens without wildcards or spaces")
    if tokens and tokens[0] == subjects.ROOT:
        # POET's streams take poet.p.>, poet.dead.>, poet.corrupt.>: keep external subjects out of poet.*.
        raise ConfigError(f"{what} {value!r} is inside POET's own subjects ({subjects.ROOT}.>)")
    return value


@dataclass
class BridgeSettings:
    """What the bridge connects (see the module docstring). Prefixes are dot-separated subject tokens."""

    inbound: dict[str, str] = field(default_factory=lambda: dict(INBOUND_DEFAULTS))
    inbound_prefix: str = ""
    outbound_types: list[str] = field(default_factory=lambda: ["*"])
    outbound_prefix: str = "aitomatic"
    stream: str = "POET"
    durable: str = "poet-bridge"

    def __post_init__(self) -> None:
        self.inbound_prefix = _check_subject_prefix("inbound prefix", self.inbound_prefix)
        self.outbound_prefix = _check_subject_prefix("outbound prefix", self.outbound_prefix)
        for subject, kind in self.inbound.items():
            if kind not in MAPPINGS:
                raise ConfigError(f"inbound {subject!r}: unknown mapping {kind!r}; expected one of {sorted(MAPPINGS)}")
            _check_subject_prefix("inbound subject", self.inbound_subject(subject))

    def inbound_subject(self, subject: str) -> str:
        return f"{self.inbound_prefix}.{subject}" if self.inbound_prefix else subject

    def outbound_subject(self, event_type: str) -> str:
        return f"{self.outbound_prefix}.{event_type}" if self.outbound_prefix else event_type

    def sends(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, p) for p in self.outbound_types)


@dataclass
class BridgeStats:
    received: int = 0
    emitted: int = 0
    ignored: int = 0
    rejected: int = 0
    looped: int = 0
    sent: int = 0
    skipped_origin: int = 0
    last_error: str = ""


class Bridge:
    """Runs both directions on one connection. ``emit`` commits a list of envelope dicts (the router's
    ``emit_many``), so inbound events take the same path as any other emit in this delivery mode."""

    def __init__(
        self,
        link: AsyncLink,
        emit: Callable[[list[dict[str, Any]]], list[str]],
        settings: BridgeSettings | None = None,
        *,
        inbound: bool = True,
        outbound: bool = True,
        metadata: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.link = link
        self.emit = emit
        self.settings = settings or BridgeSettings()
        self.inbound = inbound
        self.outbound = outbound
        self.stats = BridgeStats()
        # The envelope's required metadata (the emitting router's version/environment/service).
        self.metadata = dict(metadata or {"version": "1.0", "environment": "production", "service": "poet"})
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._nc: Any = None

    # -- inbound ----------------------------------------------------------------------------------

    def handle_inbound(self, subject: str, kind: str, body: bytes, headers: Mapping[str, str] | None) -> str | None:
        """Map one external message and emit it; return the POET event id, or None if it was not emitted."""
        self.stats.received += 1
        if headers and ORIGIN_HEADER in headers:
            self.stats.looped += 1  # POET's own outbound message coming back: never re-imported
            return None
        try:
            mapped = MAPPINGS[kind](message_data(body))
            if mapped is None:
                self.stats.ignored += 1
                return None
            event_type, payload, source, corr = mapped
            envelope: dict[str, Any] = {
                "id": inbound_id(subject, (headers or {}).get("Nats-Msg-Id"), body),
                "type": event_type,
                "payload": payload,
                "source": source,
            }
            if corr:
                envelope["correlation_id"] = corr
            envelope["metadata"] = {**self.metadata, "origin": BRIDGE_ORIGIN, "bridge_subject": subject}
            (event_id,) = self.emit([envelope])
        except PoetError as exc:
            self.stats.rejected += 1
            # One line, terminal-safe: the text comes from outside (schema messages span lines).
            self.stats.last_error = why = clean(" ".join(exc.message.split()))
            self.log(f"bridge: rejected a message on {clean(subject)}: {why}")
            return None
        self.stats.emitted += 1
        return event_id

    async def _subscribe_inbound(self, nc: Any) -> None:
        for subject, kind in self.settings.inbound.items():
            full = self.settings.inbound_subject(subject)

            async def cb(msg: Any, full: str = full, kind: str = kind) -> None:
                self.handle_inbound(full, kind, msg.data, msg.headers)

            await nc.subscribe(full, cb=cb)

    # -- outbound ---------------------------------------------------------------------------------

    def outgoing(self, body: bytes) -> tuple[str, bytes, str] | None:
        """``(subject, message, event id)`` to send for one stream message, or None to skip it."""
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return None
        if (event.get("metadata") or {}).get("origin") == BRIDGE_ORIGIN:
            self.stats.skipped_origin += 1  # came in through the bridge: never sent back out
            return None
        if not self.settings.sends(event["type"]) or not isinstance(event.get("payload"), dict):
            return None
        return self.settings.outbound_subject(event["type"]), outbound_message(event), str(event.get("id"))

    async def _outbound_loop(self, nc: Any, stop: asyncio.Event) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        js = nc.jetstream()
        sub = await js.pull_subscribe(
            f"{subjects.EVENTS}.>", durable=self.settings.durable, stream=self.settings.stream
        )
        while not stop.is_set():
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except (TimeoutError, NatsTimeout):
                continue
            for msg in msgs:
                out = self.outgoing(msg.data)
                if out is not None:
                    subject, data, event_id = out
                    await nc.publish(subject, data, headers={ORIGIN_HEADER: ORIGIN, "Nats-Msg-Id": event_id})
                    self.stats.sent += 1
            await nc.flush()  # the server has every message of the batch before the batch is acknowledged
            for msg in msgs:
                await msg.ack()

    # -- running ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, ready: Callable[[], None] | None = None) -> None:
        """Run until ``stop`` is set. Connection loss is survived by the client's reconnects."""
        self._nc = nc = await self.link.connect()
        try:
            if self.inbound:
                await self._subscribe_inbound(nc)
                await nc.flush()
            if ready is not None:
                ready()
            if self.outbound:
                while not stop.is_set():
                    try:
                        await self._outbound_loop(nc, stop)
                    except Exception as exc:  # stream missing, server gone: report, back off, go on
                        self.stats.last_error = f"{type(exc).__name__}: {exc}"
                        try:
                            await asyncio.wait_for(stop.wait(), timeout=1.0)
                        except TimeoutError:
                            pass
            else:
                await stop.wait()
        finally:
            await nc.drain() if nc.is_connected else await nc.close()
