"""poetctl: the event backbone for POET.

The public library surface is small: :class:`EventRouter` to emit and
subscribe, :class:`Event` for what handlers receive, :func:`load_config` and
the error classes (each carries its exit code).
"""

from __future__ import annotations

from .config import Config, load_config
from .errors import InvalidData, PoetError, SpoolIOError, UnknownType
from .event import Event
from .router import EventRouter

__version__ = "0.1.0"

# The seed's name for the router.
POETEventRouter = EventRouter

__all__ = [
    "Config",
    "Event",
    "EventRouter",
    "InvalidData",
    "POETEventRouter",
    "PoetError",
    "SpoolIOError",
    "UnknownType",
    "__version__",
    "load_config",
]
