"""Signed feedback links: valid, rotated, forged, other event, expired, malformed."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from poetctl.integrations.links import BadToken, feedback_url, sign, verify

NOW = 1_800_000_000.0


def test_a_signed_token_verifies_until_it_expires() -> None:
    """A token verifies for its event before its expiry and is refused after."""
    t = sign("evt_a", secret=b"k1", now=NOW, ttl=60)
    assert verify(t, "evt_a", secrets=[b"k1"], now=NOW + 59) == int(NOW + 60)
    with pytest.raises(BadToken, match="expired"):
        verify(t, "evt_a", secrets=[b"k1"], now=NOW + 61)


def test_rotation_accepts_any_active_secret() -> None:
    """A link signed with the old secret still works while both secrets are active."""
    t = sign("evt_a", secret=b"old", now=NOW)
    assert verify(t, "evt_a", secrets=[b"new", b"old"], now=NOW)
    with pytest.raises(BadToken, match="does not match"):
        verify(t, "evt_a", secrets=[b"new"], now=NOW)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace(t.split(".")[0], str(int(t.split(".")[0]) + 1000)),  # extended expiry
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # tampered MAC
    ],
)
def test_tampered_tokens_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    """Changing the expiry or the MAC is caught."""
    t = sign("evt_a", secret=b"k", now=NOW)
    with pytest.raises(BadToken):
        verify(mutate(t), "evt_a", secrets=[b"k"], now=NOW)


def test_a_token_for_another_event_is_refused() -> None:
    """A token cannot be replayed on a different alert."""
    t = sign("evt_a", secret=b"k", now=NOW)
    with pytest.raises(BadToken, match="does not match"):
        verify(t, "evt_b", secrets=[b"k"], now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "1.2", "x" * 200, "123." + "A" * 43 + "=", "-1." + "A" * 43])
def test_malformed_tokens_are_refused(token: str) -> None:
    """Anything not shaped like a token is refused before any MAC is computed."""
    with pytest.raises(BadToken, match="malformed"):
        verify(token, "evt_a", secrets=[b"k"], now=NOW)


def test_feedback_url_carries_the_token_and_the_preselected_answer() -> None:
    """The URL points at the event's page and its token verifies."""
    url = feedback_url("http://127.0.0.1:8080/", "evt_a", secret=b"k", now=NOW, answer="false_alarm")
    parts = urlsplit(url)
    assert parts.path == "/poet/feedback/evt_a"
    q = parse_qs(parts.query)
    assert q["answer"] == ["false_alarm"]
    assert verify(q["t"][0], "evt_a", secrets=[b"k"], now=NOW)
    with pytest.raises(ValueError):
        feedback_url("http://h", "evt_a", secret=b"k", now=NOW, answer="maybe")
    with pytest.raises(ValueError):
        sign("evt_a", secret=b"", now=NOW)
