"""Partition keys: which events must be handled in order, one at a time.

The key is the first present, non-empty value among configured paths
(``payload.function_name``, ``correlation_id``, ``type`` by default),
written ``path=value``. Backends compute it when they lease an event (the
spool to pick a bucket lock, NATS to pick a partition subject at publish).

The one implementation: the filesystem daemon (``poetctl.daemon.core``) and
the generic loop both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .event import Event

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PARTITION_KEY = ("payload.function_name", "correlation_id", "type")

KeyFunction = Callable[[Event], str]


def partition_key(event: Event, paths: Iterable[str]) -> str:
    """The first present, non-empty value among ``paths``; ``type=<type>`` if none is."""
    for p in paths:
        if p.startswith("payload."):
            v: Any = event.payload
            for part in p[8:].split("."):
                v = v.get(part) if isinstance(v, dict) else None
        else:
            v = getattr(event, p, None)
        if v is not None and v != "":
            return f"{p}={v}"
    return f"type={event.type}"


def key_function(paths: tuple[str, ...] = DEFAULT_PARTITION_KEY) -> KeyFunction:
    """:func:`partition_key` for fixed ``paths``; the default gets a specialised version (hot path)."""
    if paths != DEFAULT_PARTITION_KEY:
        return lambda event: partition_key(event, paths)

    def default_key(event: Event) -> str:
        v = event.payload.get("function_name")
        if v is not None and v != "":
            return f"payload.function_name={v}"
        v = event.correlation_id
        if v is not None and v != "":
            return f"correlation_id={v}"
        return f"type={event.type}"

    return default_key


__all__ = ["DEFAULT_PARTITION_KEY", "KeyFunction", "key_function", "partition_key"]


def configured_key_function(daemon_table: dict[str, Any]) -> KeyFunction:
    """The key function of ``[daemon] partition_key`` (its default when unset).

    Emitters that choose a partition (NATS) and the daemons that consume it must
    agree on the key, so every one of them builds it here from the same table.
    """
    from .configspec import defaults

    return key_function(tuple({**defaults("daemon"), **daemon_table}["partition_key"]))
