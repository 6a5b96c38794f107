"""Slack incoming webhook: each ``alert.create_external`` becomes a Block Kit message.

The message names the model, feature, score, severity and priority, and has
two link buttons, "Real drift" and "False alarm", opening the feedback page
with that answer preselected (signed links; without ``[serve] public_url``
there are no buttons, only the seed's feedback path as text). Block Kit limits are respected (header 150
characters, section field 2000, button text 75, URL 3000).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..event import Event
from ..router import EventRouter
from .http import Outbound
from .pagerduty import alert_link_id
from .settings import FeedbackLinks, Integration

BUTTONS = (("real_drift", "Real drift", "danger"), ("false_alarm", "False alarm", "primary"))


def mrkdwn(value: Any, limit: int = 300) -> str:
    """Text for a mrkdwn field: Slack's three control characters escaped, bounded."""
    text = str(value)[:limit]
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message(event: Event, links: FeedbackLinks | None, channel: str | None = None) -> dict[str, Any]:
    """The webhook body for alert ``event``."""
    p = event.payload
    kind = str(p.get("alert_type", "alert")).replace("_", " ").capitalize()
    score = f"{float(p.get('drift_score', 0)):.3f}"
    fields = [
        ("Model", p.get("model_name")),
        ("Feature", p.get("feature_name")),
        ("Score", score),
        ("Severity", p.get("severity")),
        ("Priority", p.get("investigation_priority")),
        ("Execution", p.get("execution_id", "-")),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": plain(f"{kind}: {p.get('model_name')}", 150)}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{mrkdwn(value)}"} for name, value in fields],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": mrkdwn(f"correlation {event.correlation_id or '-'} · alert {event.id}", 2000),
                }
            ],
        },
    ]
    if links is not None:
        link_id = alert_link_id(event)
        blocks.append(
            {
                "type": "actions",
                "block_id": "poet_feedback",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": label},
                        "url": links.url(link_id, now=event.timestamp, answer=answer),
                        "action_id": f"poet_{answer}",
                        "value": answer,
                        "style": style,
                    }
                    for answer, label, style in BUTTONS
                ],
            }
        )
    elif p.get("feedback_url"):
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"Feedback: {mrkdwn(p['feedback_url'], 1000)}"}}
        )
    body: dict[str, Any] = {
        "text": plain(
            f"{kind}: model {p.get('model_name')}, feature {p.get('feature_name')}, score {score} "
            f"({p.get('severity')}, priority {p.get('investigation_priority')})",
            3000,
        ),
        "blocks": blocks,
    }
    if channel:
        body["channel"] = channel
    return body


class SlackIntegration:
    """Subscribes the message handler of integration ``it`` on ``router``."""

    def __init__(self, router: EventRouter, it: Integration, outbound: Outbound, links: FeedbackLinks | None) -> None:
        self.router = router
        self.it = it
        self.outbound = outbound
        self.links = links
        self.url = it.secret("webhook_url")
        if not self.url.startswith(("http://", "https://")):
            from ..errors import ConfigError

            raise ConfigError(f"{it.label} webhook_url: expected an http:// or https:// URL")

    def register(self) -> None:
        self.router.subscribe("alert.create_external", self.notify, name=f"poet.slack.{self.it.name}")

    def notify(self, event: Event) -> None:
        body = message(event, self.links, self.it.get("channel"))
        self.outbound.request("POST", self.url, body=orjson.dumps(body), headers={"content-type": "application/json"})

    def check(self) -> str:
        """`integrations check`: an empty message is refused (400 no_text) by a live webhook and posts nothing."""
        from ..daemon.outcomes import Permanent

        try:
            self.outbound.request(
                "POST", self.url, body=b"{}", headers={"content-type": "application/json"}, use_breaker=False
            )
        except Permanent as exc:
            if any(w in str(exc) for w in ("no_text", "missing_text", "invalid_payload")):
                return "webhook is live (refused an empty test message, as expected)"
            raise
        return "webhook answered 2xx to an empty message"
