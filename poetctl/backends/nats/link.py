"""One NATS connection on a private asyncio loop thread, usable from synchronous code.

nats-py is asyncio-only; poetctl's transport and daemon are threads. A
:class:`Link` runs an event loop in a daemon thread, connects there, and
:meth:`Link.run` submits a coroutine and waits for its result from any
thread. Connection failures become :class:`~poetctl.errors.BackendUnavailable`
naming the servers (never credentials).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from ...errors import BackendUnavailable
from .settings import NatsSettings

T = TypeVar("T")


class Link:
    """A connected client (``nc``), its JetStream context (``js``) and the loop they live on."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        # Bumped at every reconnect: what was in the old socket (pulled messages, acks) may be lost.
        self.epoch = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="poetctl-nats", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self.nc: Any = self.run(self._connect(), timeout=settings.connect_timeout * 2 + 5)
        except BaseException:
            self._stop_loop()
            raise
        self.js: Any = self.nc.jetstream()
        self.jsm: Any = self.nc.jsm()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _connect(self) -> Any:
        from nats.aio.client import Client

        opts = self.settings.connect_options()
        failures: list[str] = []

        async def on_error(exc: Exception) -> None:
            failures.append(type(exc).__name__)
            del failures[:-10]

        async def on_reconnect() -> None:
            self.epoch += 1

        nc = Client()
        try:
            # nats-py keeps retrying an initial connect while reconnects are allowed: bound it here. After it,
            # reconnects are unlimited (a daemon rides out a server loss; see .retry).
            await asyncio.wait_for(
                nc.connect(**opts, error_cb=on_error, reconnected_cb=on_reconnect),
                timeout=self.settings.connect_timeout + 1,
            )
            return nc
        except Exception as exc:  # nats raises several unrelated types here; all mean "cannot connect"
            try:
                await nc.close()  # its reader/flusher/ping tasks, so none is left pending at exit
            except Exception:  # a client that never connected may refuse to close: nothing to free then
                pass
            what = "no answer" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            raise BackendUnavailable(
                f"cannot connect to NATS at {self.settings.shown_servers()}: {what}; "
                "check [nats] servers / POET_NATS_URL and that the server runs with -js"
            ) from None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the link's loop and wait for its result (any thread but the loop's)."""
        if self._stopping or self.loop.is_closed():
            coro.close()  # never started: no "never awaited" warning
            raise BackendUnavailable(f"the connection to NATS at {self.settings.shown_servers()} is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                # The coroutine's own request timed out (nats-py's TimeoutError is a TimeoutError too),
                # long before ``timeout``: say that, not "within {timeout} s".
                raise BackendUnavailable(
                    f"NATS at {self.settings.shown_servers()} did not answer a request in time "
                    "(no JetStream answer within the client's request timeout; is a server down?)"
                ) from None
            fut.cancel()
            raise BackendUnavailable(
                f"NATS at {self.settings.shown_servers()} did not answer within {timeout:g} s"
            ) from None

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop without waiting (errors are dropped: use for best-effort work only)."""
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def read(self, stream: str, config: Any, page: int = 512) -> AsyncIterator[Any]:
        """Every message an ephemeral pull consumer with ``config`` delivers from ``stream``, then stop.

        A pull consumer, not a push watcher: it knows how many messages are due
        when it is made (``num_pending``) and each message says how many are
        left, so the end is exact (nats-py's KV ``watchall`` can signal its end
        before the first entries, when they arrive before it asked for the count).
        """
        from nats.js.errors import ServiceUnavailableError

        ci = await self.jsm.add_consumer(stream, config)
        sub = await self.js.pull_subscribe_bind(ci.name, stream)
        try:
            remaining = int(ci.num_pending or 0)
            unavailable = 0
            while remaining > 0:
                try:
                    msgs = await sub.fetch(min(remaining, page), timeout=5)
                except TimeoutError:
                    break
                except ServiceUnavailableError:
                    # No responders yet: in a cluster the new consumer's leader is still being chosen.
                    unavailable += 1
                    if unavailable > 100:
                        raise
                    await asyncio.sleep(0.1)
                    continue
                for m in msgs:
                    remaining = int(m.metadata.num_pending)
                    yield m
        finally:
            try:
                await sub.unsubscribe()
                await self.jsm.delete_consumer(stream, ci.name)
            except Exception:  # an ephemeral consumer goes away by itself after its inactive_threshold
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.run(self._close(), timeout=10)
        except Exception:  # closing is best effort: the process may be going down with the server
            pass
        self._stop_loop()

    async def _close(self) -> None:
        try:
            await self.nc.drain()
        except Exception:
            await self.nc.close()

    def _stop_loop(self) -> None:
        """Cancel what the client left running, stop the loop, close it (no "Task was destroyed" at exit)."""
        self._stopping = True  # run() refuses new work from here on

        async def cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_rest(), self.loop).result(5)  # not through run(): refused now
        except Exception:  # best effort: a task that ignores its cancellation must not hang the exit
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            # Work submitted by other threads (a keeper's beat) while the loop was stopping: cancel it here.
            late = asyncio.all_tasks(self.loop)
            for t in late:
                t.cancel()
            if late:
                self.loop.run_until_complete(asyncio.gather(*late, return_exceptions=True))
            self.loop.close()


__all__ = ["Link"]
