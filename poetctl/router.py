"""EventRouter: the library's front door (``emit``, ``emit_many``, ``subscribe``).

Usage, with the seed's names::

    from poetctl import EventRouter
    router = EventRouter(spool=".poet/pubsub")
    event_id = router.emit("drift.detected", {...}, source="poet.generator")

The router is three parts over one backend:

* the envelope builder (:class:`~poetctl.envelope.EnvelopeBuilder`): validates,
  links follow-ups to their cause and seals;
* the subscription registry (:class:`~poetctl.subscriptions.SubscriptionRegistry`):
  the handlers the daemon runs;
* the publisher (:class:`~poetctl.publish.Publisher`): commits through a
  :class:`~poetctl.transport.Transport` - the filesystem spool by default
  (``spool=``), any other with ``transport=``.

``emit`` validates, seals (checksum) and durably commits before it returns:
once it returns, the event survives a crash of any process. Inside a handler
run by the daemon, ``emit`` links the new event to its cause (causation_id,
inherited correlation_id, ``causation_depth`` one more than the cause's) and
derives its id from the cause, the handler and the call's position, so
re-running the handler deduplicates its follow-ups. A follow-up deeper than
``max_causation_depth`` is refused (:class:`CausationDepthExceeded`): a
handler that emits what it subscribes to stops there instead of looping.
Handlers keep what they remember in :attr:`EventRouter.stores`
(:class:`~poetctl.storage.Storage`), kept by the same backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from .config import Config, load_config
from .envelope import CausationDepthExceeded, EnvelopeBuilder, check_duplicates, same_content
from .event import Event
from .inprocess import InProcess, check_dispatch, check_inline_backend
from .limits import DEFAULT_WAIT
from .publish import Publisher
from .schemas import SchemaRegistry
from .subscriptions import Handler, Subscription, SubscriptionRegistry
from .transport import Quarantined, State, quarantine_line

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    from .backends.fs.layout import SpoolLayout
    from .backends.fs.transport import FsTransport
    from .envelope import EmitItem
    from .storage import Storage
    from .transport import Transport
    from .upcasting import Upcasters


class EventRouter(EnvelopeBuilder, SubscriptionRegistry, InProcess):
    """Emits events into a backend and holds the subscriptions the daemon runs.

    ``spool`` overrides the configured location; ``config`` defaults to
    :func:`poetctl.config.load_config`. Without ``transport`` the router
    publishes into the filesystem spool: with ``create_spool`` (the default,
    the seed's behaviour) the spool tree is created on first emit, so a
    library user needs no ``poetctl init``; with ``create_spool=False`` (what
    the ``emit`` command uses) emitting into a path that holds no spool
    raises :class:`poetctl.errors.InputMissing` (66) and creates nothing.

    ``transport`` (any :class:`~poetctl.transport.Transport`, e.g.
    :class:`~poetctl.backends.memory.MemoryTransport`) replaces the spool;
    ``storage`` gives the handlers' stores (default: the spool's files for
    the spool, the transport's ``storage()`` if it has one, else in-memory
    stores for a memory transport).

    ``dispatch`` is what ``emit`` does after the commit: ``"queue"`` (the
    default) leaves the event to the consumers - ``poetctl daemon``, or this
    process's own after :meth:`start` / :meth:`run_until_idle`; ``"inline"``
    runs the matching subscribers before ``emit`` returns, with the daemon's
    lease, retries and recovery (:mod:`poetctl.inline`). ``emit`` and
    ``emit_many`` take ``dispatch=`` per call too.
    """

    def __init__(
        self,
        spool: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        registry: SchemaRegistry | None = None,
        create_spool: bool = True,
        transport: Transport | None = None,
        storage: Storage | None = None,
        dispatch: str = "queue",
    ) -> None:
        if transport is not None and spool is not None:
            raise TypeError("give spool= or transport=, not both")
        if config is None:
            config = load_config(spool=spool) if transport is None else Config()
        elif spool is not None:
            config.spool = type(config.spool)(spool)
        EnvelopeBuilder.__init__(
            self, config, registry if registry is not None else SchemaRegistry(config.schema_paths)
        )
        SubscriptionRegistry.__init__(self)
        self.create_spool = create_spool
        prepare: Callable[[], None] | None = None
        if transport is None:
            transport, prepare = _spool_transport(config, create_spool)
        self.transport = transport
        self.publisher = Publisher(transport, config, prepare)
        self._storage = storage
        self.dispatch = check_dispatch(dispatch)
        if dispatch == "inline":
            check_inline_backend(self)
        self.upcasters: Upcasters | None = None  # created by the first upcast() (see poetctl.upcasting)

    def upcast(self, event_type: str, from_version: int, to_version: int, fn: Callable[[dict[str, Any]], Any]) -> None:
        """Register ``fn(payload) -> payload`` taking ``event_type`` from one schema version to a later one.

        Handlers then receive old events at the newest version; see :mod:`poetctl.upcasting`.
        """
        from .upcasting import Upcasters

        if self.upcasters is None:
            self.upcasters = Upcasters(self.registry)
        self.upcasters.register(event_type, from_version, to_version, fn)

    # -- the backend --------------------------------------------------------
    @property
    def stores(self) -> Storage:
        """The handlers' stores (function state, feedback records, learning state); built on first use."""
        if self._storage is None:
            self._storage = _default_storage(self.transport)
        return self._storage

    @property
    def layout(self) -> SpoolLayout:
        """The spool's layout (compatibility: only for a router on the filesystem spool)."""
        layout = getattr(self.transport, "layout", None)
        if layout is None:
            raise AttributeError(f"{type(self.transport).__name__} has no spool layout")
        return layout  # type: ignore[no-any-return]

    @property
    def committer(self) -> Any:
        """The spool's group committer (compatibility: only for a router on the filesystem spool)."""
        committer = getattr(self.transport, "committer", None)
        if committer is None:
            raise AttributeError(f"{type(self.transport).__name__} has no group committer")
        return committer

    # -- emitting -----------------------------------------------------------
    def emit(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        source: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id: str | None = None,
        environment: str | None = None,
        expires_at: float | None = None,
        where: str | None = None,
        schema_version: int | None = None,
        priority: str | None = None,
        wait: float = DEFAULT_WAIT,
        dispatch: str | None = None,
    ) -> str:
        """Validate, seal and durably commit one event; return its id.

        ``where`` names the input in error messages (a file name, a line).
        ``schema_version`` picks the payload schema version (default: the newest).
        ``priority`` is ``"high"``, ``"normal"`` or ``"low"``: the daemon fetches due
        high events first (see ``[daemon] priority_shares``). Default: normal, or
        inside a handler the priority of the event being handled.
        ``wait``: with ``[limits]`` set, how long to wait for room in the spool
        (or a rate token for the source) before raising
        :class:`~poetctl.limits.Backpressure` (75; nothing written).
        Safe to call from several threads: concurrent emits share the
        publish step and its directory fsync (group commit, see
        :class:`poetctl.backends.fs.writer.GroupCommitter`); each returns once its
        own event is durable.

        Emitting an id that already exists (pending, in flight, processed or
        dead-lettered) is a no-op that returns the id. An id that is
        quarantined (``corrupt/``) raises :class:`Quarantined` (65): the
        earlier event was never handled, so doing nothing would lose this one.
        Raises :class:`InvalidData` (65) for bad input and
        :class:`SpoolIOError` (74) when the spool cannot be written; in all
        these cases nothing is written.

        ``dispatch="inline"`` (default: the router's ``dispatch``) then runs
        the matching local subscribers before returning; a handler's failure
        is logged and retried later by any consumer, never raised here.
        """
        inline = self._inline_wanted(dispatch)
        ev, keyed = self.build(
            event_type,
            payload,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            id=id,
            environment=environment,
            expires_at=expires_at,
            where=where,
            schema_version=schema_version,
            priority=priority,
        )
        cause = self._cause()
        if cause is not None and cause.buffer is not None:
            cause.buffer.append((ev, keyed))
            return ev.id
        added = self.publisher.publish([(ev, keyed)], admit=wait)
        if inline and added[0]:
            self._dispatch_inline(ev)
        return ev.id

    def emit_many(
        self, items: Iterable[EmitItem], *, dispatch: str | None = None, wait: float = DEFAULT_WAIT
    ) -> list[str]:
        """Validate every item, then commit them all as one group; return the ids in order.

        Items are ``(type, payload)`` pairs, envelope dicts (see :meth:`ingest`)
        or :class:`Event` objects. If any item is invalid nothing is written;
        two items with one id are one event if their content is the same
        (see :func:`same_content`) and invalid otherwise; an id in quarantine
        raises :class:`Quarantined` and nothing of the group is written.
        Inside a handler the items are follow-ups, buffered like :meth:`emit`'s.
        With ``[limits]`` set, the whole group waits up to ``wait`` seconds for
        room, then raises :class:`~poetctl.limits.Backpressure` (nothing written).
        With inline dispatch the new events are then dispatched in order.
        """
        inline = self._inline_wanted(dispatch)
        build = (self._coerce(item, f"item {i + 1}") for i, item in enumerate(items))
        cause = self._cause()
        if cause is not None and cause.buffer is not None:
            built = list(build)
            check_duplicates(built, _item_name)
            cause.buffer.extend(built)
        else:
            # On the spool files are written in bursts while later events are built (nothing visible before all are).
            built, added = self.publisher.publish_built(build, lambda b: check_duplicates(b, _item_name), admit=wait)
            if inline:
                for (ev, _), new in zip(built, added, strict=True):
                    if new:
                        self._dispatch_inline(ev)
        return [ev.id for ev, _ in built]

    def _inline_wanted(self, dispatch: str | None) -> bool:
        if dispatch is None:
            return self.dispatch == "inline"
        if check_dispatch(dispatch) == "inline" and self.dispatch != "inline":
            check_inline_backend(self)  # before anything is written
        return dispatch == "inline"

    def commit_events(
        self, built: list[tuple[Event, bool]], *, wait: float | None = None, partial: bool = False
    ) -> list[bool]:
        """Commit already-validated events as one group; True per event actually added.

        ``wait`` (seconds) keeps the ``[limits]`` (see :meth:`emit`; None, the
        daemon's follow-ups: none). With ``partial`` the leading events that fit
        are committed and the list is shorter than ``built``.

        Commits running concurrently in other threads of this process may be
        published as one group; if that fails, each of them raises
        :class:`SpoolIOError` and none of their events is visible. An id in
        quarantine raises :class:`Quarantined` and nothing of the group is written.
        """
        return self.publisher.publish(built, admit=wait, partial=partial)

    def quarantine_reason(self, event_id: str) -> str | None:
        """Why ``event_id`` is quarantined (one printable line), or None if it is not."""
        layout = getattr(self.transport, "layout", None)
        if layout is not None:  # the spool: one lexists, no lookup in every state (keyed batch lines ask this)
            from .backends.fs.transport import quarantine_reason

            return quarantine_reason(layout, event_id)
        stored = self.transport.get(event_id)
        if stored is None or stored.state is not State.CORRUPT:
            return None
        return quarantine_line(stored.info)


def _item_name(i: int) -> str:
    return f"item {i + 1}"


def _spool_transport(config: Config, create: bool) -> tuple[FsTransport, Callable[[], None]]:
    """The filesystem spool of ``config`` and what to do before its first publish (create, or check it exists)."""
    from .backends.fs.transport import FsTransport

    transport = FsTransport(config.spool, config=config)
    layout = transport.layout

    def prepare() -> None:
        if create:
            layout.init()
        else:
            layout.require_real(layout.events, layout.tmp, layout.pending)

    return transport, prepare


def _default_storage(transport: Transport) -> Storage:
    layout = getattr(transport, "layout", None)
    if layout is not None:
        from .backends.fs.storage import FsStorage

        return FsStorage(layout)
    make = getattr(transport, "storage", None)
    if callable(make):
        return make()  # type: ignore[no-any-return]
    from .backends.memory import MemoryTransport

    if isinstance(transport, MemoryTransport):
        from .backends.memory.storage import MemoryStorage

        return MemoryStorage(transport.clock)
    raise AttributeError(
        f"{type(transport).__name__} keeps no handler state: pass EventRouter(storage=...) "
        "(poetctl.storage.Storage) to run handlers that keep state"
    )


__all__ = [
    "CausationDepthExceeded",
    "EmitItem",
    "EventRouter",
    "Handler",
    "Quarantined",
    "Subscription",
    "check_duplicates",
    "same_content",
]
