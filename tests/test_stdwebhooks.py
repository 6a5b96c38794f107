"""Standard Webhooks signer and verifier: the spec's published vectors, rotation and every way to fail."""

from __future__ import annotations

import base64
import os

import pytest

from poetctl.integrations.stdwebhooks import WebhookVerificationError, decode_secret, sign, signature, verify

# From the Standard Webhooks reference libraries' tests (libraries/python/tests/test_webhooks.py).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_BAD_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="  # the reference tests' invalid one


def key(secret: str = VECTOR_SECRET) -> bytes:
    return decode_secret(secret)


def headers(sig: str, msg_id: str = VECTOR_ID, ts: int = VECTOR_TS) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_the_published_vector_signs_and_verifies() -> None:
    """The signer reproduces the spec libraries' signature and the verifier accepts it."""
    assert signature(VECTOR_ID, VECTOR_TS, VECTOR_BODY, key()) == VECTOR_SIG
    assert sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY, [key()])["webhook-signature"] == VECTOR_SIG
    assert verify(headers(VECTOR_SIG), VECTOR_BODY, [key()], now=VECTOR_TS) == VECTOR_ID


def test_the_secret_prefix_is_optional() -> None:
    """whsec_<base64> and the bare base64 are the same key."""
    assert decode_secret(VECTOR_SECRET) == decode_secret(VECTOR_SECRET.removeprefix("whsec_"))


@pytest.mark.parametrize("bad", ["whsec_", "whsec_not base64!", "whsec_@@@@"])
def test_bad_secrets_are_refused(bad: str) -> None:
    """An empty or non-base64 secret raises ValueError (a config error, not a silent empty key)."""
    with pytest.raises(ValueError):
        decode_secret(bad)


def test_rotation_signs_with_every_key_and_either_verifies() -> None:
    """With two active secrets the header has two v1 signatures; a receiver with only one of them accepts."""
    new = os.urandom(32)
    h = sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY, [new, key()])
    assert h["webhook-signature"].split(" ")[1] == VECTOR_SIG
    assert verify(h, VECTOR_BODY, [key()], now=VECTOR_TS) == VECTOR_ID
    assert verify(h, VECTOR_BODY, [new], now=VECTOR_TS) == VECTOR_ID
    assert verify(headers(VECTOR_SIG), VECTOR_BODY, [new, key()], now=VECTOR_TS) == VECTOR_ID


# Every case a verifier must refuse; each is checked against the vector's valid signature.
REFUSED = {
    "the reference tests' invalid signature": (headers(VECTOR_BAD_SIG), VECTOR_BODY, VECTOR_TS),
    "tampered body": (headers(VECTOR_SIG), b'{"test": 2432232315}', VECTOR_TS),
    "body with a trailing newline": (headers(VECTOR_SIG), VECTOR_BODY + b"\n", VECTOR_TS),
    "another message id": (headers(VECTOR_SIG, msg_id="msg_other"), VECTOR_BODY, VECTOR_TS),
    "another timestamp": (headers(VECTOR_SIG, ts=VECTOR_TS + 1), VECTOR_BODY, VECTOR_TS + 1),
    "stale timestamp": (headers(VECTOR_SIG), VECTOR_BODY, VECTOR_TS + 301),
    "timestamp from the future": (headers(VECTOR_SIG), VECTOR_BODY, VECTOR_TS - 301),
    "signature of another version": (headers("v1a," + VECTOR_SIG[3:]), VECTOR_BODY, VECTOR_TS),
    "signature without version": (headers(VECTOR_SIG[3:]), VECTOR_BODY, VECTOR_TS),
    "empty signature value": (headers("v1,"), VECTOR_BODY, VECTOR_TS),
    "missing id": ({"webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIG}, VECTOR_BODY, VECTOR_TS),
    "missing timestamp": ({"webhook-id": VECTOR_ID, "webhook-signature": VECTOR_SIG}, VECTOR_BODY, VECTOR_TS),
    "missing signature": ({"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS)}, VECTOR_BODY, VECTOR_TS),
    "timestamp not a number": (
        {"webhook-id": VECTOR_ID, "webhook-timestamp": "hello", "webhook-signature": VECTOR_SIG},
        VECTOR_BODY,
        VECTOR_TS,
    ),
    "timestamp with a sign": (
        {"webhook-id": VECTOR_ID, "webhook-timestamp": f"+{VECTOR_TS}", "webhook-signature": VECTOR_SIG},
        VECTOR_BODY,
        VECTOR_TS,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_verifier_refuses(case: str) -> None:
    """Tampered, stale, future, wrongly versioned or incomplete requests are refused (0 false accepts)."""
    hdrs, body, now = REFUSED[case]
    with pytest.raises(WebhookVerificationError):
        verify(hdrs, body, [key()], now=now)


def test_a_wrong_secret_is_refused_even_among_several_signatures() -> None:
    """Signatures under secrets the receiver does not hold never verify, whatever their number."""
    others = [os.urandom(24) for _ in range(3)]
    h = sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY, others)
    with pytest.raises(WebhookVerificationError):
        verify(h, VECTOR_BODY, [key()], now=VECTOR_TS)
    with pytest.raises(WebhookVerificationError):
        verify(headers(VECTOR_SIG), VECTOR_BODY, [], now=VECTOR_TS)


def test_random_forgeries_are_never_accepted() -> None:
    """A thousand random signatures for the vector's message: none verifies."""
    for _ in range(1000):
        forged = "v1," + base64.b64encode(os.urandom(32)).decode()
        with pytest.raises(WebhookVerificationError):
            verify(headers(forged), VECTOR_BODY, [key()], now=VECTOR_TS)


def test_header_names_are_case_insensitive_and_the_id_may_not_have_dots() -> None:
    """HTTP header names arrive in any case; the signer refuses an id with '.' (the spec's rule)."""
    h = {k.title(): v for k, v in headers(VECTOR_SIG).items()}
    assert verify(h, VECTOR_BODY, [key()], now=VECTOR_TS) == VECTOR_ID
    with pytest.raises(ValueError):
        sign("msg.1", VECTOR_TS, VECTOR_BODY, [key()])
