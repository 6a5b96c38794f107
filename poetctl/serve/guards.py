"""What stands in front of every handler: bearer tokens, rate limits, bounded body reads, JSON errors.

A refusal is decided before anything is emitted: authentication and the rate
limit before the body is read, the size limit while it is read (a declared
``Content-Length`` over the limit is refused without reading a byte).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .settings import Secrets

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse


class Refused(Exception):
    """A request refused with ``status`` and a JSON body ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        from starlette.responses import JSONResponse

        return JSONResponse(
            {"error": self.code, "message": self.message, **self.extra}, status_code=self.status, headers=self.headers
        )


def bearer_index(request: Request, tokens: Secrets) -> int:
    """The index of the configured token the request's ``Authorization: Bearer`` carries; else Refused.

    Every configured token is compared (digests, constant time, no early
    exit), so the time taken says nothing about which token nearly matched.
    """
    if not tokens:
        raise Refused(403, "disabled", "POST /events is disabled: no [serve] token is configured")
    challenge = {"WWW-Authenticate": 'Bearer realm="poetctl"'}
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Refused(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)", challenge)
    digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
    found = -1
    for i, token in enumerate(tokens.values):
        if hmac.compare_digest(digest, hashlib.sha256(token).digest()):
            found = i
    if found < 0:
        raise Refused(401, "unauthorized", "the bearer token is not valid", challenge)
    return found


class TokenBuckets:
    """One token bucket per key: ``rate`` requests a second, bursts up to ``burst``; rate 0 = unlimited."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: object) -> float:
        """Take one token for ``key``: 0.0 if granted, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def check(self, key: object) -> None:
        """Refused (429, with ``Retry-After`` in whole seconds) when ``key`` has no token left."""
        wait = self.take(key)
        if wait > 0:
            after = max(1, math.ceil(wait))
            raise Refused(
                429,
                "rate_limited",
                f"too many requests for this token; retry in {after} s",
                {"Retry-After": str(after)},
                retry_after=after,
            )


async def read_body(request: Request, limit: int, timeout: float, what: str = "request body") -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout`` seconds; else Refused (413 / 408 / 400)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, "bad_request", f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > limit:
            raise Refused(413, "too_large", f"{what} of {declared} bytes is over the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, "too_large", f"{what} is over the limit of {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise Refused(408, "timeout", f"{what} not received within {timeout:g} s") from None
    return b"".join(parts)
