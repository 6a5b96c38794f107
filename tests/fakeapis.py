"""The stand-in PagerDuty, Slack and webhook receivers: :mod:`poetctl.standins` (shared with the demo)."""

from poetctl.standins import (
    SLACK_PATH,
    FakeAPI,
    Reply,
    Request,
    pagerduty,
    pagerduty_errors,
    receiver,
    refused_url,
    serve,
    slack,
    slack_errors,
)

__all__ = [
    "SLACK_PATH",
    "FakeAPI",
    "Reply",
    "Request",
    "pagerduty",
    "pagerduty_errors",
    "receiver",
    "refused_url",
    "serve",
    "slack",
    "slack_errors",
]
