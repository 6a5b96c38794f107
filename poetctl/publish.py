"""The publisher: commits sealed events through a :class:`~poetctl.transport.Transport`.

The last part of :class:`~poetctl.router.EventRouter` (after the envelope
builder and the subscription registry). It checks each event's stored size
against the config's ``max_event_bytes``, marks a repeated id within one group as keyed (the
first wins, like a re-emit) and hands the group to ``transport.publish``,
which is durable before it returns. ``prepare`` runs once before the first
publish (the filesystem router creates or checks its spool there).
"""

from __future__ import annotations

import _thread  # threading's own lock/local types; threading itself stays out of a one-event emit (start-up)
import itertools
import time
from collections.abc import Callable, Iterable, Sequence

from .config import Config
from .errors import InvalidData
from .event import Event
from .transport import Outgoing

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from .transport import Transport


class Publisher:
    """Publishes groups of built ``(event, keyed)`` pairs through ``transport``. Thread-safe."""

    def __init__(self, transport: Transport, config: Config, prepare: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.config = config  # read at each publish: max_event_bytes may be changed after construction
        self._prepare = prepare
        self._ready = prepare is None
        self._init_lock = _thread.allocate_lock()
        # Called after each successful publish with (events, added, seconds): emit-side metrics.
        # A tuple, replaced whole, so publishing threads read it without a lock.
        self.observers: tuple[Callable[[list[Event], list[bool], float], None], ...] = ()

    def _ensure(self) -> None:
        if not self._ready:
            with self._init_lock:
                if not self._ready:
                    assert self._prepare is not None
                    self._prepare()
                    self._ready = True

    def publish(
        self, built: Sequence[tuple[Event, bool]], admit: float | None = None, partial: bool = False
    ) -> list[bool]:
        """Publish already-validated events as one group; True per event actually added.

        ``admit`` (seconds): keep the ``[limits]`` - wait up to that long for room
        and rate tokens, then raise :class:`~poetctl.limits.Backpressure` (75) with
        nothing written. With ``partial`` the leading events that fit are
        published and the list is shorter than ``built``. None (the daemon's
        follow-ups): no limits.

        Raises :class:`InvalidData` (65) for an event over ``max_event_bytes``
        before anything is written; otherwise what ``transport.publish`` raises
        (:class:`~poetctl.transport.Quarantined`, :class:`~poetctl.errors.SpoolIOError`...).
        """
        if not built:
            return []
        self._ensure()
        items = self._items(built)
        if admit is not None:
            gate = getattr(self.transport, "admit", None)  # backends without limits admit everything
            if gate is not None:
                items = items[: gate(items, admit, partial)]
        if not self.observers:
            return self.transport.publish(items)
        t0 = time.perf_counter()
        added = self.transport.publish(items)
        self._observe(items, added, t0)
        return added

    def _items(self, built: Sequence[tuple[Event, bool]]) -> list[Outgoing]:
        """The group's items; raises :class:`InvalidData` for the first event over ``max_event_bytes``."""
        limit = self.config.max_event_bytes
        items: list[Outgoing] = []
        seen: set[str] = set()
        for ev, keyed in built:
            data = ev.line()  # serialised once, when the builder sealed it
            if len(data) > limit:
                raise _too_large(ev, len(data), limit)
            # Two items with one id in the same group: the first wins, like a re-emit
            # (callers that take input refuse such pairs with different content first).
            items.append(Outgoing(ev, data, keyed or ev.id in seen))
            seen.add(ev.id)
        return items

    def _observe(self, items: list[Outgoing], added: list[bool], t0: float) -> None:
        seconds = time.perf_counter() - t0
        events = [it.event for it in items]
        for observe in self.observers:
            observe(events, added, seconds)

    def publish_built(
        self,
        build: Iterable[tuple[Event, bool]],
        check: Callable[[list[tuple[Event, bool]]], None],
        admit: float | None = None,
    ) -> tuple[list[tuple[Event, bool]], list[bool]]:
        """``publish(built, admit)`` of ``built = list(build)`` after ``check(built)``; returns both lists.

        Same outcome, errors and order of errors as building the list, checking
        it and publishing it; but on a transport that can stream (the spool:
        :meth:`~poetctl.backends.fs.transport.FsTransport.stream`) the files
        are written in bursts as the events are built, and made durable in the
        background while the next ones are built. Nothing is visible before
        every event is built and checked: any error (an invalid item raised by
        ``build``, ``check``, an event too large, an I/O error) removes what
        was written and raises. (The spool is prepared once the first item is
        built, so a later invalid item may leave a new, empty spool behind.)
        """
        it = iter(build)
        first = next(it, None)
        if first is None:
            check([])
            return [], []
        build = itertools.chain((first,), it)
        opener = getattr(self.transport, "stream", None)
        stream = None
        if opener is not None:
            self._ensure()
            stream = opener(admit)
        if stream is None:  # another backend, or [limits] to keep: the whole group first
            built = list(build)
            check(built)
            return built, self.publish(built, admit=admit)
        built = []
        limit = self.config.max_event_bytes
        too_large: InvalidData | None = None
        try:
            for ev, keyed in build:
                built.append((ev, keyed))
                if too_large is not None:
                    continue  # nothing more is written; the items are still built (their errors come first)
                data = ev.line()
                if len(data) > limit:
                    too_large = _too_large(ev, len(data), limit)
                    continue
                stream.add(data)
            check(built)
            if too_large is not None:
                raise too_large
            items = self._items(built)
            t0 = time.perf_counter()
            added = stream.commit(items)
        except BaseException:
            stream.abort()
            raise
        if self.observers:
            self._observe(items, added, t0)
        return built, added


def _too_large(ev: Event, size: int, limit: int) -> InvalidData:
    return InvalidData(f"event {ev.id} is {size} bytes; the limit is {limit} bytes (max_event_bytes)")


__all__ = ["Publisher"]
