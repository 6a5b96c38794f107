"""Creating the state entries of keyed events at publish: one KV create each, pipelined, repeated through a server loss.

Moved out of :mod:`.transport` (its publish calls :func:`create_all`). A create is a publish to the entry's
subject with an expected last subject sequence of 0: the server refuses it (error 10071) when the entry exists.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .retry import confirmed_all, transient

EXPECT_LAST = "Nats-Expected-Last-Subject-Sequence"


def wrong_last(exc: BaseException) -> bool:
    """A create refused because the key exists (JetStream error 10071)."""
    return getattr(exc, "err_code", None) == 10071


async def create_all(js: Any, made: list[tuple[str, bytes]]) -> list[bool]:
    """Create the state entries (pipelined, repeated through a server loss); per entry: made by this call."""
    done: dict[int, bool] = {}
    left = list(range(len(made)))
    loop = asyncio.get_running_loop()
    from .retry import OUTAGE

    end = loop.time() + OUTAGE
    delay = 0.05
    while left:
        futs = []
        failure: BaseException | None = None
        for k in left:
            try:
                futs.append(await js.publish_async(made[k][0], made[k][1], headers={EXPECT_LAST: "0"}))
            except Exception as exc:
                failure = exc
                break
        results = await confirmed_all(futs)
        again = []
        for k, r in zip(left, [*results, *[failure] * (len(left) - len(futs))], strict=True):
            if isinstance(r, BaseException) and wrong_last(r):
                done[k] = False  # existed (or our own create whose PubAck was lost: made, then)
            elif isinstance(r, BaseException) or r is None:
                failure = failure or r
                again.append(k)
            else:
                done[k] = True
        left = again
        if left:
            assert failure is not None
            if not transient(failure) or loop.time() + delay > end:
                raise failure
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
    return [done[k] for k in range(len(made))]


__all__ = ["EXPECT_LAST", "create_all", "wrong_last"]
