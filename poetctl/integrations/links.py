"""Signed, expiring feedback links.

Alert messages (Slack, PagerDuty) carry a link to the feedback page,
``<base>/poet/feedback/<event id>?t=<token>[&answer=...]``. The token proves
the holder received the alert: it is ``<expires>.<mac>``, where ``mac`` is the
unpadded base64url HMAC-SHA256, under a server secret, of
``poet-feedback.v1.<event id>.<expires>``. The preselected ``answer`` is not
signed: it only fills in the form, the person still submits it.

Several secrets may be active at once (the first signs, all verify), so the
secret can be rotated without breaking links already sent. Nothing here reads
the clock: callers pass ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from urllib.parse import quote, urlencode

DOMAIN = "poet-feedback.v1"
DEFAULT_TTL = 7 * 24 * 3600.0  # a week: alerts are answered late, but links should not live forever
ANSWERS = ("real_drift", "false_alarm")
_TOKEN = re.compile(r"\A([0-9]{1,12})\.([A-Za-z0-9_-]{43})\Z")  # 32-byte MAC, unpadded base64url


class BadToken(ValueError):
    """The token is malformed, forged, for another event, or expired (the message says which)."""


def _mac(secret: bytes, event_id: str, expires: int) -> str:
    digest = hmac.new(secret, f"{DOMAIN}.{event_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(event_id: str, *, secret: bytes, now: float, ttl: float = DEFAULT_TTL) -> str:
    """A token for ``event_id`` valid until ``now + ttl`` (whole seconds)."""
    if not secret:
        raise ValueError("the feedback secret is empty")
    expires = int(now + ttl)
    return f"{expires}.{_mac(secret, event_id, expires)}"


def verify(token: str, event_id: str, *, secrets: Sequence[bytes], now: float) -> int:
    """Check ``token`` for ``event_id`` against every active secret; return its expiry.

    Raises :class:`BadToken` when it is malformed, matches no secret (forged,
    tampered or for another event) or has expired. Comparison is constant-time.
    """
    m = _TOKEN.match(token)
    if m is None:
        raise BadToken("malformed feedback token")
    expires = int(m.group(1))
    ok = False
    for secret in secrets:
        if secret and hmac.compare_digest(_mac(secret, event_id, expires), m.group(2)):
            ok = True
    if not ok:
        raise BadToken("feedback token does not match this alert")
    if now > expires:
        raise BadToken("feedback link has expired")
    return expires


def feedback_url(
    base_url: str,
    event_id: str,
    *,
    secret: bytes,
    now: float,
    ttl: float = DEFAULT_TTL,
    answer: str | None = None,
) -> str:
    """The feedback page's URL for alert ``event_id``, signed; ``answer`` preselects a choice."""
    if answer is not None and answer not in ANSWERS:
        raise ValueError(f"answer {answer!r}: expected one of {', '.join(ANSWERS)}")
    query = {"t": sign(event_id, secret=secret, now=now, ttl=ttl)}
    if answer is not None:
        query["answer"] = answer
    return f"{base_url.rstrip('/')}/poet/feedback/{quote(event_id, safe='')}?{urlencode(query)}"
