"""Generic webhooks: matching events POSTed as CloudEvents 1.0 structured JSON, signed per Standard Webhooks.

``types`` and ``topics`` are globs (``*`` any characters); an event matches
when its type matches one of ``types`` (or ``types`` is empty) and its topic
one of ``topics`` (or ``topics`` is empty). The request:

* body: ``poetctl.cloudevents.to_cloudevent(event)`` as compact JSON,
  ``content-type: application/cloudevents+json``;
* ``webhook-id``: the event id (``.`` written ``~``: the spec forbids dots),
  the same on every retry, so a receiver can deduplicate;
* ``webhook-timestamp``: the time of this attempt;
* ``webhook-signature``: ``v1,<sig>`` for every active secret (rotation).
"""

from __future__ import annotations

import fnmatch
import time

import orjson

from ..cloudevents import to_cloudevent
from ..errors import ConfigError
from ..event import Event
from ..router import EventRouter
from . import stdwebhooks
from .http import Outbound
from .settings import Integration

CONTENT_TYPE = "application/cloudevents+json"


def webhook_id(event_id: str) -> str:
    """The ``webhook-id`` of an event: its id with ``.`` as ``~`` (not an id character, so still unique)."""
    return event_id.replace(".", "~")


class WebhookIntegration:
    """Subscribes one configured webhook on ``router``."""

    def __init__(self, router: EventRouter, it: Integration, outbound: Outbound) -> None:
        self.router = router
        self.it = it
        self.outbound = outbound
        self.url = it.url("url")
        try:
            self.keys = [stdwebhooks.decode_secret(s) for s in it.secrets("secrets")]
        except ValueError as exc:
            raise ConfigError(f"{it.label} secrets: {exc}") from None
        self.types: list[str] = list(it.get("types") or [])
        self.topics: list[str] = list(it.get("topics") or [])

    def register(self) -> None:
        # One subscription: a type glob when that is the whole filter, else every type, filtered here.
        only = self.types[0] if len(self.types) == 1 and not self.topics else "*"
        self.router.subscribe(only, self.deliver, name=f"poet.webhook.{self.it.name}")

    def matches(self, event: Event) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(event.type, t) for t in self.types):
            return False
        return not self.topics or any(fnmatch.fnmatchcase(event.topic or "", t) for t in self.topics)

    def request(self, event: Event, now: float) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST for ``event`` at time ``now``."""
        body = orjson.dumps(to_cloudevent(event))
        headers = stdwebhooks.sign(webhook_id(event.id), int(now), body, self.keys)
        headers["content-type"] = CONTENT_TYPE
        return body, headers

    def deliver(self, event: Event) -> None:
        if not self.matches(event):
            return
        body, headers = self.request(event, time.time())
        self.outbound.request("POST", self.url, body=body, headers=headers)

    def check(self) -> str:
        """`integrations check`: a signed ping (a CloudEvent of type poetctl.ping) must get a 2xx."""
        now = time.time()
        ce = {
            "specversion": "1.0",
            "id": f"poetctl-check-{int(now)}",
            "source": "poetctl",
            "type": "poetctl.ping",
            "datacontenttype": "application/json",
            "data": {"check": True},
        }
        body = orjson.dumps(ce)
        headers = stdwebhooks.sign(str(ce["id"]), int(now), body, self.keys)
        headers["content-type"] = CONTENT_TYPE
        self.outbound.request("POST", self.url, body=body, headers=headers, use_breaker=False)
        return "accepted a signed ping"
