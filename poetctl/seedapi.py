"""The seed's names for the router: ``POETEventRouter``, ``EventDeliveryMode``, ``CorrelationTracker``.

Code written against the seed's design runs with only its import line changed::

    from poetctl import EventDeliveryMode, POETEventRouter

    router = POETEventRouter(storage_path=".poet/events", delivery_mode=EventDeliveryMode.HYBRID)
    router.subscribe("drift.detected", handler)
    router.emit("drift.detected", payload)      # handler runs before emit returns

:class:`POETEventRouter` *is* an :class:`~poetctl.router.EventRouter` (the primary
spelling, ``EventRouter(spool=...)``); the seed's constructor picks the backend:

* ``LOCAL_ONLY``: the filesystem spool at ``storage_path``; ``dispatch="inline"``
  by default, the seed's ``_deliver_local``: subscribers run inside ``emit``,
  with a real lease, retries and recovery (see :mod:`poetctl.inline`).
* ``HYBRID`` (the seed's default): the same local spool, which is also the
  outbox of NATS JetStream: ``start()`` runs the forwarder beside the local
  consumer when the NATS backend is installed and ``[nats]`` (or
  ``POET_NATS_URL``) names a server; otherwise it is LOCAL_ONLY, as the seed's
  hybrid router without an event bus was. ``emit`` never touches NATS.
* ``AITOMATIC_ONLY``: NATS JetStream only (``poetctl``'s ``nats`` mode):
  ``EventRouter(transport=NatsTransport(...))`` from ``[nats]``; handlers run
  in consumers (``start()``, ``poetctl daemon --mode nats``), ``dispatch="queue"``.
  Without the NATS backend a :class:`~poetctl.errors.BackendUnavailable` (69) says what is missing.
"""

from __future__ import annotations

import importlib
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailable, UsageError
from .router import EventRouter
from .transport import Query

if TYPE_CHECKING:
    from .config import Config
    from .schemas import SchemaRegistry
    from .storage import Storage


class EventDeliveryMode(Enum):
    """The seed's delivery modes (values as in the seed); :attr:`config_name` is poet.toml's ``delivery_mode``."""

    LOCAL_ONLY = "local_only"
    AITOMATIC_ONLY = "aitomatic_only"
    HYBRID = "hybrid"

    @property
    def config_name(self) -> str:
        return "nats" if self is EventDeliveryMode.AITOMATIC_ONLY else self.value

    @classmethod
    def of(cls, mode: EventDeliveryMode | str) -> EventDeliveryMode:
        """An EventDeliveryMode from itself, its value or poet.toml's name (``nats``); UsageError otherwise."""
        if isinstance(mode, cls):
            return mode
        names = {m.value: m for m in cls} | {"nats": cls.AITOMATIC_ONLY}
        if isinstance(mode, str) and mode.lower() in names:
            return names[mode.lower()]
        raise UsageError(f"delivery_mode {mode!r}: expected one of {', '.join(m.name for m in cls)}")


class CorrelationTracker:
    """The seed's tracker, answered by the backend (the spool's index and listings, NATS's stream)."""

    def __init__(self, router: EventRouter) -> None:
        self._router = router

    def track(self, correlation_id: str, event_id: str) -> None:
        """Accepted for compatibility and ignored: every event is tracked by its ``correlation_id`` already."""

    def get_events(self, correlation_id: str) -> list[str]:
        """Ids of the events whose ``correlation_id`` is this one, oldest first, in any state ([] for none)."""
        if not correlation_id:
            return []  # Query(correlation_id=None) would match every event
        found = self._router.transport.select(Query(correlation_id=correlation_id))
        return [s.id for s in reversed(list(found))]


class POETEventRouter(EventRouter):
    """The seed's constructor over :class:`~poetctl.router.EventRouter` (see the module docstring).

    ``storage_path`` is the spool (default: the seed's ``.poet/events``);
    ``dispatch`` defaults to ``"inline"`` for the local modes and ``"queue"``
    for AITOMATIC_ONLY; ``config`` defaults to poet.toml / ``POET_*``. The
    seed's ``aitomatic_event_bus`` (an in-process bus object) is not
    supported: NATS JetStream is the shared bus (AITOMATIC_ONLY, HYBRID).
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str] = ".poet/events",
        delivery_mode: EventDeliveryMode | str = EventDeliveryMode.HYBRID,
        aitomatic_event_bus: Any = None,
        *,
        config: Config | None = None,
        dispatch: str | None = None,
        registry: SchemaRegistry | None = None,
        storage: Storage | None = None,
    ) -> None:
        mode = EventDeliveryMode.of(delivery_mode)
        if aitomatic_event_bus is not None:
            raise UsageError(
                "aitomatic_event_bus: poetctl does not publish to an in-process bus object; "
                "use delivery_mode=EventDeliveryMode.AITOMATIC_ONLY or HYBRID (NATS JetStream, [nats] in poet.toml)"
            )
        self.delivery_mode = mode
        self.storage_path = Path(storage_path)
        self._forwarder: Any = None
        if mode is EventDeliveryMode.AITOMATIC_ONLY:
            from .config import load_config

            cfg = config if config is not None else load_config(spool=storage_path)
            transport = nats_transport(cfg)
            super().__init__(
                config=cfg, registry=registry, transport=transport, storage=storage, dispatch=dispatch or "queue"
            )
        else:
            super().__init__(
                storage_path, config=config, registry=registry, storage=storage, dispatch=dispatch or "inline"
            )

    def start(self, workers: int | None = None) -> EventRouter:
        """:meth:`EventRouter.start`; in HYBRID mode with NATS configured, also the outbox forwarder."""
        super().start(workers)
        if self.delivery_mode is EventDeliveryMode.HYBRID and self._forwarder is None and nats_configured(self.config):
            self._forwarder = start_forwarder(self)
        return self

    def close(self) -> list[str]:
        fw, self._forwarder = self._forwarder, None
        if fw is not None:
            fw.stop()
        return super().close()


def nats_configured(config: Config) -> bool:
    """True if ``[nats] servers`` or ``POET_NATS_URL`` names a server."""
    return bool(os.environ.get("POET_NATS_URL") or dict(config.nats).get("servers"))


def _nats_module(name: str, what: str) -> Any:
    """``poetctl.backends.nats.<name>``, or BackendUnavailable (69) saying what is missing for ``what``."""
    try:
        return importlib.import_module(f"poetctl.backends.nats.{name}")
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("poetctl.backends.nats"):
            raise BackendUnavailable(
                f"{what} needs poetctl's NATS JetStream backend (poetctl.backends.nats), "
                "which this installation does not have; use EventDeliveryMode.LOCAL_ONLY (the local spool)"
            ) from None
        if exc.name is not None and exc.name.split(".")[0] == "nats":
            raise BackendUnavailable(f"{what} needs the nats-py client: pip install 'poetctl[nats]'") from None
        raise


def nats_transport(config: Config) -> Any:
    """``NatsTransport(NatsSettings.from_config(config.nats))`` (what ``--mode nats`` uses)."""
    what = "delivery_mode AITOMATIC_ONLY (NATS JetStream)"
    settings = _nats_module("settings", what).NatsSettings.from_config(config.nats)
    from .partition import configured_key_function

    # The same partition key as `emit --mode nats` and the daemons, or one key's events could split;
    # the same [daemon] priority_shares as the daemons serve their lanes by.
    daemon = dict(config.daemon)
    return _nats_module("transport", what).NatsTransport(
        settings, key_of=configured_key_function(daemon), priority_shares=daemon.get("priority_shares")
    )


def start_forwarder(router: EventRouter) -> Any:
    """HYBRID: the spool's outbox forwarder to JetStream on its own thread (as ``daemon --mode hybrid``)."""
    fw = _nats_module("forwarder", "delivery_mode HYBRID with [nats] configured (the forwarder to JetStream)")
    cfg = router.config
    forwarder = fw.Forwarder(router.layout, fw.nats_sink(cfg.nats), max_event_bytes=cfg.max_event_bytes)
    return fw.ForwarderThread(forwarder).start()


__all__ = ["CorrelationTracker", "EventDeliveryMode", "POETEventRouter", "nats_configured", "nats_transport"]
