"""``--upcast`` for reading commands: show stored events at their type's newest schema version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def upcaster_for(cfg: Any, handlers: Sequence[str], builtin: bool = True) -> Callable[[Any], Any]:
    """A function mapping a :class:`poetctl.backends.fs.query.Found` to one holding the upcast event.

    The upcasters are those the daemon would have: the handler modules of
    poet.toml and ``handlers`` register them (their ``register(router)`` runs,
    nothing is subscribed to anything that runs). A missing step raises
    :class:`~poetctl.upcasting.UpcastError` (65) here, before anything is printed.
    """
    from ..daemon.loader import load_handlers
    from ..router import EventRouter
    from ..upcasting import UpcastError, upcast_event
    from .output import warn

    router = EventRouter(config=cfg, create_spool=False)
    if builtin:
        from ..handlers import register_builtin

        register_builtin(router)
    load_handlers(router, [*cfg.handlers, *handlers])  # checks the chains
    registry = router.upcasters

    def transform(f: Any) -> Any:
        try:
            ev = upcast_event(f.event, registry)
        except UpcastError as exc:
            warn(f"{exc}; shown as stored")
            return f
        return f if ev is f.event else f.replace(event=ev, raw=ev.to_json())

    return transform
