"""Outbound HTTP for the integrations: one client per endpoint, and what each outcome means to the daemon.

=====================================  ==================================================
outcome                                the handler raises
=====================================  ==================================================
2xx                                    nothing (the breaker closes)
transport error, timeout, slow body    :class:`Transient` -> the daemon's backoff schedule
5xx                                    ``Retry(after=Retry-After)`` if given, else Transient
429                                    ``Retry(after=Retry-After)`` if given, else Transient
3xx (redirects are not followed)       ``Permanent`` (fix the URL)
other 4xx                              ``Permanent`` with the response body (truncated, safe)
breaker open                           ``Retry(after=<rest of the cooldown>)``, no request
=====================================  ==================================================

A dead letter's error thus says what the service answered. Messages name the
integration, never its URL (a Slack webhook URL is a secret). httpx is
imported when the first request is made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..daemon.outcomes import Permanent, Retry
from ..safetext import clean
from .breaker import Breaker, BreakerOpen

if TYPE_CHECKING:
    import httpx

MAX_BODY = 64 * 1024  # of a response kept; PagerDuty and Slack answer in a few hundred bytes
SHOWN_BODY = 300  # characters of a response body quoted in an error
MAX_RETRY_AFTER = 3600.0  # a Retry-After further out is capped: the daemon's schedule takes over after it
USER_AGENT = "poetctl"


class Transient(Exception):
    """A failure worth retrying on the daemon's schedule (the service may be back later)."""


@dataclass(slots=True)
class Answer:
    """A 2xx response: status, headers and the (bounded) body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import orjson

        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), capped; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; a date without a zone is not one
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


def shown_body(body: bytes) -> str:
    """A response body quoted in an error: decoded, control characters escaped, truncated."""
    text = clean(body[: SHOWN_BODY * 4].decode("utf-8", "replace"))
    return text if len(text) <= SHOWN_BODY else text[: SHOWN_BODY - 3] + "..."


class Outbound:
    """POSTs to one endpoint of integration ``name`` with timeouts, a size-bounded read and a breaker."""

    def __init__(
        self,
        name: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        breaker: Breaker | None = None,
    ) -> None:
        self.name = name
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.breaker = breaker
        self._client: httpx.Client | None = None

    def client(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
                trust_env=False,  # no proxy or netrc picked up from the environment behind the operator's back
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        use_breaker: bool = True,
    ) -> Answer:
        """Send; return the 2xx :class:`Answer` or raise Transient / Retry / Permanent (see the module doc)."""
        breaker = self.breaker if use_breaker else None
        if breaker is not None:
            try:
                breaker.before()
            except BreakerOpen as exc:
                raise Retry(str(exc), after=exc.after) from None
        status, resp_headers, data = self._send(method, url, body, headers, breaker)
        if 200 <= status < 300:
            if breaker is not None:
                breaker.success()
            return Answer(status, resp_headers, data)
        wait = retry_after(resp_headers.get("retry-after"), time.time())
        what = f"{self.name}: HTTP {status}: {shown_body(data)}"
        if status >= 500:
            if breaker is not None:
                breaker.failure(f"HTTP {status}")
            if wait is not None:
                raise Retry(what, after=wait)
            raise Transient(what)
        if breaker is not None:
            breaker.success()  # it answered: the endpoint is alive, the request is what is wrong
        if status == 429:
            if wait is not None:
                raise Retry(what, after=wait)
            raise Transient(what)
        if 300 <= status < 400:
            raise Permanent(f"{self.name}: HTTP {status} redirect (not followed; configure the final URL)")
        raise Permanent(what)

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        breaker: Breaker | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        import httpx

        # The read timeout bounds each wait for bytes; the deadline bounds a body trickled slowly.
        deadline = time.monotonic() + self.connect_timeout + 2 * self.read_timeout
        try:
            with self.client().stream(method, url, content=body, headers=dict(headers or {})) as resp:
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    if size < MAX_BODY:
                        chunks.append(chunk[: MAX_BODY - size])
                        size += len(chunks[-1])
                    if time.monotonic() > deadline:
                        raise _SlowBody
                return resp.status_code, resp.headers, b"".join(chunks)
        except _SlowBody:
            reason = "the response body arrived too slowly"
        except httpx.TimeoutException as exc:
            reason = f"timed out ({type(exc).__name__})"
        except httpx.TransportError as exc:
            reason = f"cannot reach the endpoint ({type(exc).__name__}: {_scrub(str(exc), url)})"
        if breaker is not None:
            breaker.failure(reason)
        raise Transient(f"{self.name}: {reason}")


class _SlowBody(Exception):
    pass


def _scrub(text: str, url: str) -> str:
    return clean(text.replace(url, "<url>"))[:200]
