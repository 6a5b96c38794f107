"""``serve`` in ``delivery_mode = "nats"``: events go to JetStream, the feedback page reads them back from it.

* **Connecting.** The server starts whether or not NATS answers (``/readyz``
  says which): the connection is made at start in the background, and again
  on demand (at most once per :data:`RETRY_GAP`) until it succeeds. Once made,
  nats-py reconnects by itself after a server loss, forever.
* **Never blocking the event loop.** The transport's calls block on its own
  loop thread (:class:`~poetctl.backends.nats.link.Link`), so they run on a
  small thread pool of their own and the request awaits them, for at most
  :data:`DEADLINE` seconds. While the connection is down a request is refused
  at once (503) without taking a thread. The transport retries a publish
  through a server loss for minutes (:mod:`poetctl.backends.nats.retry`); a
  request that reached its deadline answers 503 and its publish may still land
  later: a client repeats it under the same event id, which is a no-op if it did.
* **The same answers as the spool.** The router is the spool's (same
  validation, size limits, keyed ids; ``[limits]`` kept by the NATS transport,
  :mod:`poetctl.backends.nats.limits`), built once over :class:`LazyNats`, so a
  bad event is a 4xx even while NATS is down. A second commit of an id answers
  False on NATS as on the spool (the server's ``Nats-Msg-Id`` dedup, then the
  state entry), which is what keeps one answer per alert on the feedback page.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import BackendUnavailable, PoetError
from ..event import Event
from ..transport import Outgoing, Query, State, Stored

T = TypeVar("T")

DEADLINE = 10.0  # seconds a request waits for NATS before it answers 503
RETRY_GAP = 1.0  # seconds between two connection attempts while NATS is down
WORKERS = 16  # threads waiting on NATS answers (one connection: more would only queue there)
PROBE_TIMEOUT = 2.0  # seconds /readyz waits for JetStream's answer


class LazyNats:
    """The transport the router publishes through: the connected NatsTransport, or BackendUnavailable.

    Only what the router and the serve app use (publish, admit, get, state_of, select).
    """

    def __init__(self, backend: NatsBackend) -> None:
        self._backend = backend

    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        added: list[bool] = self._backend.current().publish(items)
        return added

    def admit(self, items: Sequence[Outgoing], wait: float, partial: bool = False) -> int:
        n: int = self._backend.current().admit(items, wait, partial)
        return n

    def get(self, event_id: str) -> Stored | None:
        found: Stored | None = self._backend.current().get(event_id)
        return found

    def state_of(self, event_id: str) -> State | None:
        state: State | None = self._backend.current().state_of(event_id)
        return state

    def select(self, query: Query, limit: int | None = None) -> Iterator[Stored]:
        found: Iterator[Stored] = self._backend.current().select(query, limit)
        return found


class NatsBackend:
    """JetStream through one lazily made :class:`~poetctl.backends.nats.transport.NatsTransport`."""

    kind = "nats"

    def __init__(self, cfg: Any, make: Callable[[], Any] | None = None) -> None:
        from ..backends.nats.settings import NatsSettings
        from ..router import EventRouter

        self.cfg = cfg
        self.settings = NatsSettings.from_config(cfg.nats)  # a bad [nats] table is a ConfigError (78) before listening
        self._make = make or self._default_make
        self._transport: Any = None
        self._lock = threading.Lock()
        self._failed_at = -1e9
        self._last_error = ""
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="poetctl-serve-nats")
        self.router = EventRouter(transport=LazyNats(self), config=cfg)  # type: ignore[arg-type]

    def _default_make(self) -> Any:
        from ..cli.mode import nats_transport

        return nats_transport(self.cfg)  # [limits] and [daemon] partition_key as emit has them

    def where(self) -> str:
        return f"NATS {self.settings.shown_servers()}"

    def start(self) -> None:
        """Connect in the background now, so the first request usually finds the connection made."""
        self._pool.submit(self._warm)

    def _warm(self) -> None:
        try:
            self.current()
        except PoetError:
            pass  # /readyz and the requests report it; the next one tries again

    # -- the connection -------------------------------------------------------------------------
    def _down(self) -> str | None:
        """Why the made connection cannot be used now, or None (an attribute read: safe on the event loop)."""
        t = self._transport
        if t is None:
            return None
        nc = t.link.nc
        if nc.is_connected:
            return None
        return f"lost the connection to NATS at {self.settings.shown_servers()}; reconnecting, retry shortly"

    def current(self) -> Any:
        """The connected transport; BackendUnavailable (one line) while NATS cannot be reached."""
        t = self._transport
        if t is not None:
            if t.link.nc.is_closed:  # the client gave up (it should not: reconnects are unlimited): start over
                with self._lock:
                    if self._transport is t:
                        self._transport = None
                self._pool.submit(t.close)
            else:
                why = self._down()
                if why is not None:
                    raise BackendUnavailable(why)
                return t
        with self._lock:
            if self._transport is not None:
                return self._transport
            if time.monotonic() - self._failed_at < RETRY_GAP:
                raise BackendUnavailable(self._last_error)
            try:
                self._transport = self._make()
            except PoetError as exc:
                self._failed_at = time.monotonic()
                self._last_error = exc.message
                raise BackendUnavailable(exc.message) from None
            return self._transport

    async def call(self, fn: Callable[..., T], *args: Any, check: bool = True) -> T:
        """``fn(*args)`` on the NATS threads, for at most :data:`DEADLINE` s; BackendUnavailable when NATS is down.

        ``check``: refuse at once while the connection is down (False for work that may not need NATS:
        validating events, which asks NATS only about keyed ids).
        """
        why = self._down() if check else None
        if why is not None:
            raise BackendUnavailable(why)  # at once, without a thread
        fut = self._pool.submit(fn, *args)
        try:
            # A call still queued at the deadline is cancelled (it never runs); one running finishes on its thread.
            return await asyncio.wait_for(asyncio.wrap_future(fut), DEADLINE)
        except TimeoutError:
            raise BackendUnavailable(
                f"NATS at {self.settings.shown_servers()} did not answer within {DEADLINE:g} s; "
                "what was sent may still be stored: repeat it with the same event id (a repeat is a no-op)"
            ) from None
        except PoetError:
            raise
        except Exception as exc:
            from .guards import Refused

            if isinstance(exc, Refused):
                raise
            # nats-py errors the transport did not wrap: still one line, never a traceback.
            text = " ".join(str(exc).split())[:200]
            raise BackendUnavailable(f"NATS call failed ({type(exc).__name__}: {text})") from None

    # -- lookups --------------------------------------------------------------------------------
    def event(self, event_id: str) -> Event | None:
        from ..ids import is_event_id

        if not is_event_id(event_id):
            return None
        found = self.current().get(event_id)
        if found is None or found.state is State.CORRUPT:
            return None
        ev: Event | None = found.event
        return ev

    def alert_of(self, correlation_id: str) -> Event | None:
        # Newest first (select yields by stream sequence, descending).
        for found in self.current().select(Query(types=["alert.create_external"], correlation_id=correlation_id)):
            if found.event is not None:
                ev: Event = found.event
                return ev
        return None

    # -- health ---------------------------------------------------------------------------------
    def _probe(self) -> None:
        """One JetStream API round trip: the server answers and JetStream is enabled."""
        t = self.current()

        async def ask() -> None:
            await t.link.jsm.account_info()

        try:
            t.link.run(ask(), timeout=PROBE_TIMEOUT)
        except PoetError:
            raise
        except Exception as exc:
            raise BackendUnavailable(
                f"NATS at {self.settings.shown_servers()} did not answer a JetStream request ({type(exc).__name__})"
            ) from None

    async def readiness(self) -> dict[str, str]:
        try:
            await self.call(self._probe)
        except BackendUnavailable as exc:
            return {"nats": exc.message}
        return {"nats": "ok"}

    def health(self) -> dict[str, str]:
        t = self._transport
        if t is None:
            return {"nats": "not connected"}
        return {"nats": "connected" if t.link.nc.is_connected else "reconnecting"}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            t, self._transport = self._transport, None
        if t is not None:
            t.close()


__all__ = ["DEADLINE", "LazyNats", "NatsBackend"]
