"""Standard Webhooks (https://www.standardwebhooks.com) symmetric signatures: sign and verify.

Signed content: ``{webhook-id}.{webhook-timestamp}.{body}``; signature:
``v1,<base64 HMAC-SHA256>`` under the secret, which is written ``whsec_``
followed by its base64. The ``webhook-signature`` header is a space-separated
list, so a sender signs with every active secret while keys are rotated, and
a receiver accepts a request when any listed ``v1`` signature matches any of
its secrets. The verifier follows the spec: all three headers required, the
timestamp an integer within ``tolerance`` seconds of now (replays), constant-
time comparison, other signature versions ignored. Nothing reads the clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds; the reference libraries' five minutes


class WebhookVerificationError(ValueError):
    """The request is not signed by any active secret, or is stale, or lacks a header (the message says which)."""


def decode_secret(secret: str) -> bytes:
    """The key bytes of ``whsec_<base64>`` (the prefix is optional); ValueError if it is not base64 or empty."""
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signature(msg_id: str, timestamp: int, body: bytes, key: bytes) -> str:
    """``v1,<base64>`` for one key."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def sign(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> dict[str, str]:
    """The three headers for ``body``, signed with every key (space-separated, for rotation)."""
    if "." in msg_id or not msg_id:
        raise ValueError("a webhook id must be non-empty and contain no '.'")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(signature(msg_id, int(timestamp), body, k) for k in keys),
    }


def verify(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[bytes],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Check a received request; return its ``webhook-id``. Header names are matched case-insensitively."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not msg_id or ts_text is None or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not (ts_text.isascii() and ts_text.isdigit()) or len(ts_text) > 12:
        raise WebhookVerificationError("webhook-timestamp is not an integer number of seconds")
    ts = int(ts_text)
    if abs(now - ts) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new (replay?)")
    expected = [signature(msg_id, ts, body, k).encode() for k in keys if k]
    ok = False
    for item in sigs.split(" "):
        version, _, value = item.partition(",")
        if version != "v1" or not value:
            continue
        for want in expected:
            # Compare every pair (no early exit): timing says nothing about which secret matched.
            ok |= hmac.compare_digest(want, f"v1,{value}".encode())
    if not ok:
        raise WebhookVerificationError("no webhook-signature matches an active secret")
    return msg_id
