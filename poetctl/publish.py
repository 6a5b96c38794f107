"""A router that publishes through a :class:`~poetctl.transport.Transport`.

The bridge until the router splits into envelope builder, subscription
registry and publisher (issue 10, next step): :class:`EventRouter` builds,
validates and seals exactly as before; only the final commit goes to the
transport instead of the spool's group committer. The spool is never touched:
``layout`` points at a path that cannot exist, so code that still reaches for
files (the built-in state and learning handlers) fails loudly instead of
writing into the current directory.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import InvalidData
from .event import Event
from .router import EventRouter
from .schemas import SchemaRegistry
from .transport import Outgoing, Transport

NO_SPOOL = Path("/dev/null/poetctl-no-spool")  # mkdir under a character device always fails


class TransportRouter(EventRouter):
    """:class:`EventRouter` whose ``emit``/``emit_many``/follow-ups go to ``transport.publish``."""

    def __init__(
        self, transport: Transport, *, config: Config | None = None, registry: SchemaRegistry | None = None
    ) -> None:
        cfg = config if config is not None else Config(spool=NO_SPOOL)
        super().__init__(config=cfg, registry=registry)
        self.transport = transport

    def _ensure(self) -> None:
        """Nothing to create: the transport is ready when it is constructed."""

    def commit_events(self, built: list[tuple[Event, bool]]) -> list[bool]:
        """Publish already-validated events as one group; True per event actually added."""
        if not built:
            return []
        limit = self.config.max_event_bytes
        items: list[Outgoing] = []
        seen: set[str] = set()
        for ev, keyed in built:
            data = ev.to_json() + b"\n"
            if len(data) > limit:
                raise InvalidData(f"event {ev.id} is {len(data)} bytes; the limit is {limit} bytes (max_event_bytes)")
            # Two items with one id in a group: the first wins, like a re-emit.
            items.append(Outgoing(ev, data, keyed or ev.id in seen))
            seen.add(ev.id)
        return self.transport.publish(items)

    def commit_found(self, built: list[tuple[Event, bool]]) -> tuple[list[bool], dict[int, Path]]:
        """:meth:`commit_events`; a transport reports no paths (where an existing id lives is its business)."""
        return self.commit_events(built), {}


__all__ = ["NO_SPOOL", "TransportRouter"]
