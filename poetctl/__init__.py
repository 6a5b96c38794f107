"""poetctl: the event backbone for POET.

The public library surface is small: :class:`EventRouter` to emit and
subscribe (and, in process, ``start``/``run_until_idle``/``close``),
:class:`Event` for what handlers receive, :func:`load_config` and the error
classes (each carries its exit code); the seed's names ``POETEventRouter``,
``EventDeliveryMode``, ``MLMonitoringEventHandlers``, ``LearningEngine`` and
``FunctionStateHandlers`` for code ported from the seed. Names are imported on first
use, so ``import poetctl.something`` stays cheap for the command-line tool.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "Config": ".config",
    "load_config": ".config",
    "Backpressure": ".limits",
    "InvalidData": ".errors",
    "PoetError": ".errors",
    "SpoolIOError": ".errors",
    "UnknownType": ".errors",
    "Event": ".event",
    "EventRouter": ".router",
    "Permanent": ".errors",
    "Retry": ".daemon.outcomes",
    # The seed's names (see poetctl.seedapi and poetctl.handlers).
    "POETEventRouter": ".seedapi",
    "EventDeliveryMode": ".seedapi",
    "CorrelationTracker": ".seedapi",
    "MLMonitoringEventHandlers": ".handlers",
    "LearningEngine": ".handlers",
    "FunctionStateHandlers": ".handlers",
}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Config, load_config
    from .daemon.outcomes import Retry
    from .errors import InvalidData, Permanent, PoetError, SpoolIOError, UnknownType
    from .event import Event
    from .handlers import FunctionStateHandlers, LearningEngine, MLMonitoringEventHandlers
    from .limits import Backpressure
    from .router import EventRouter
    from .seedapi import CorrelationTracker, EventDeliveryMode, POETEventRouter


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poetctl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "Backpressure",
    "Config",
    "CorrelationTracker",
    "Event",
    "EventDeliveryMode",
    "EventRouter",
    "FunctionStateHandlers",
    "InvalidData",
    "LearningEngine",
    "MLMonitoringEventHandlers",
    "POETEventRouter",
    "Permanent",
    "PoetError",
    "Retry",
    "SpoolIOError",
    "UnknownType",
    "__version__",
    "load_config",
]
