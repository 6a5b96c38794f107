"""Riding out a server loss: which NATS errors are transient, and retrying an operation until the cluster answers.

When a server of a cluster dies, nats-py reconnects to another one by
itself, but what was in the dead server's socket is gone: a request gets no
answer (``TimeoutError``), a ``publish_async`` PubAck never comes (its future
never resolves), and while the cluster elects new stream/consumer leaders
JetStream answers "no responders" or 503. Each of these ends once the cluster
has settled (seconds), so an operation that is safe to repeat is retried with
backoff for up to :data:`OUTAGE` seconds before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

OUTAGE = 120.0  # seconds a repeatable operation is retried through a server loss before it fails
ACK_TIMEOUT = 5.0  # seconds a PubAck may take before its publish counts as lost (and is repeated)
RUN_TIMEOUT = OUTAGE + 30.0  # Link.run timeout for operations that retry (above OUTAGE: the retry decides)


def transient(exc: BaseException) -> bool:
    """True for errors a server loss or a leader election causes, which end once the cluster settles."""
    import nats.errors as ne
    import nats.js.errors as je

    if isinstance(exc, TimeoutError | asyncio.TimeoutError):  # nats.errors.TimeoutError is one too
        return True
    if isinstance(
        exc,
        ne.NoRespondersError
        | ne.OutboundBufferLimitError
        | ne.StaleConnectionError
        | ne.ConnectionReconnectingError
        | je.NoStreamResponseError
        | je.ServiceUnavailableError,
    ):
        return True
    if isinstance(exc, je.APIError) and not isinstance(exc, je.NotFoundError | je.BadRequestError):
        code = getattr(exc, "code", None)
        return code is None or int(code) >= 500  # 503: JetStream temporarily unavailable (an election)
    return False


async def retrying(op: Callable[[], Awaitable[T]], deadline: float = OUTAGE) -> T:
    """``await op()``, repeated with backoff (50 ms doubling to 1 s) while it fails transiently (``deadline`` s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    delay = 0.05
    while True:
        try:
            return await op()
        except Exception as exc:
            if not transient(exc) or loop.time() + delay > end:
                raise
            if delay == 0.05:
                from ...daemon import log

                log.warning(
                    "NATS did not answer; trying again",
                    operation=getattr(op, "__qualname__", repr(op)),
                    error=repr(exc),
                )
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)


async def confirmed_all(futs: list[Any], timeout: float = ACK_TIMEOUT) -> list[Any]:
    """Every ``publish_async`` PubAck of ``futs``, or its error (``TimeoutError`` if it did not come in ``timeout``).

    One wait for all (no task per future: this is the publish hot path). Futures still pending at the
    timeout are cancelled, which frees their publish_async slots (nats-py's PubAck futures have no timeout
    of their own: a publish lost with a dead server's socket would hold its slot forever).
    """
    if not futs:
        return []
    _, pending = await asyncio.wait(futs, timeout=timeout)
    for f in pending:
        f.cancel()
    out: list[Any] = []
    for f in futs:
        if f.cancelled():
            out.append(TimeoutError(f"no PubAck within {timeout:g} s"))
        else:
            exc = f.exception()
            out.append(exc if exc is not None else f.result())
    return out


async def confirmed(fut: Any, timeout: float = ACK_TIMEOUT) -> Any:
    """A ``publish_async`` PubAck, or ``TimeoutError`` after ``timeout`` (the future is cancelled: its slot is freed).

    nats-py's PubAck futures have no timeout of their own: a publish lost with a dead server's socket
    would hold its future (and one of the 4,000 pending slots) forever.
    """
    return await asyncio.wait_for(fut, timeout)


__all__ = ["ACK_TIMEOUT", "OUTAGE", "RUN_TIMEOUT", "confirmed", "confirmed_all", "retrying", "transient"]
