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
from collections.abc import Coroutine
from typing import Any, TypeVar

from ...errors import BackendUnavailable
from .settings import NatsSettings

T = TypeVar("T")


class Link:
    """A connected client (``nc``), its JetStream context (``js``) and the loop they live on."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
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
        import nats

        opts = self.settings.connect_options()
        failures: list[str] = []

        async def on_error(exc: Exception) -> None:
            failures.append(type(exc).__name__)

        try:
            # nats-py keeps retrying an initial connect while reconnects are allowed: bound it here.
            return await asyncio.wait_for(
                nats.connect(**opts, error_cb=on_error), timeout=self.settings.connect_timeout + 1
            )
        except Exception as exc:  # nats raises several unrelated types here; all mean "cannot connect"
            what = "no answer" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            raise BackendUnavailable(
                f"cannot connect to NATS at {self.settings.shown_servers()}: {what}; "
                "check [nats] servers / POET_NATS_URL and that the server runs with -js"
            ) from None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the link's loop and wait for its result (any thread but the loop's)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise BackendUnavailable(
                f"NATS at {self.settings.shown_servers()} did not answer within {timeout:g} s"
            ) from None

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop without waiting (errors are dropped: use for best-effort work only)."""
        asyncio.run_coroutine_threadsafe(coro, self.loop)

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
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


__all__ = ["Link"]
