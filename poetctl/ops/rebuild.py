"""``poetctl state rebuild``: the handlers' state reconstructed from the event history alone.

The state the built-in handlers keep (function versions and history, the
learning engine's document, feedback records) is a function of the events
they handled. Rebuilding replays every *processed* event, oldest first (id
order: the order a key's events are handled in; a follow-up sorts right after
its cause), through fresh instances of the state-keeping built-in handlers -
function state, the ML-monitoring handlers and their learning engine, as
``[builtin_handlers]`` and ``[learning]`` configure them - writing into an
empty :class:`~poetctl.storage.Storage`. Their follow-ups are dropped (they
are in the history already); integrations (PagerDuty, Slack, webhooks,
MLflow) and user handler modules are never run. Stored events at an older
schema version go through the router's upcasters, as the daemon does.

:func:`snapshot` reads any storage through the interface into one plain
document, and :func:`diff` compares two of them, one line per difference.

What it cannot know: events pruned from ``processed/`` (rebuild from a full
history, or restore one first), handlers of dead-lettered events that had
finished before the event died (dead events are not replayed), and state
written by anything but the built-in handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from typing import Any

from ..config import Config
from ..errors import PoetError
from ..event import Event
from ..storage import Storage
from ..transport import Query, State, Transport

MAX_SHOWN = 200  # characters of a value in a diff line


def history(transport: Transport) -> list[Event]:
    """Every processed event, oldest first."""
    from ..backends.memory import sort_key

    events = [s.event for s in transport.select(Query(states=(State.PROCESSED,))) if s.event is not None]
    events.sort(key=lambda e: (sort_key(e.id, e.timestamp), e.id))
    return events


def replay(config: Config, events: Iterable[Event], storage: Storage, upcasters: Any = None) -> dict[str, int]:
    """Run the state-keeping built-in handlers over ``events`` into ``storage``; counts of what ran and failed."""
    from ..backends.memory import MemoryTransport
    from ..handlers.learning import LearningEngine, LearningSettings
    from ..handlers.ml_monitoring import HandlerSwitches, MLMonitoringEventHandlers
    from ..handlers.state import FunctionStateHandlers
    from ..router import EventRouter
    from ..upcasting import upcast_event

    router = EventRouter(config=config, transport=MemoryTransport(), storage=storage)
    switches = HandlerSwitches.from_config(dict(config.builtin_handlers))
    engine = LearningEngine(storage.learning, LearningSettings.from_config(dict(config.learning)))
    MLMonitoringEventHandlers(router, engine, switches)
    if switches.function_state:
        FunctionStateHandlers(router)
    subs = list(router.subscriptions)
    counts = {"events": 0, "handled": 0, "failed": 0}
    for ev in events:
        counts["events"] += 1
        ev = upcast_event(ev, upcasters)
        for sub in subs:
            if sub.pattern != ev.type and not fnmatchcase(ev.type, sub.pattern):
                continue
            router.set_cause(ev, sub.name, [])  # follow-ups go to a buffer nobody commits
            try:
                sub.fn(ev)
                counts["handled"] += 1
            except Exception:
                counts["failed"] += 1  # as a handler that failed for good: its effects are not in the state
            finally:
                router.set_cause(None)
    return counts


def snapshot(storage: Storage, tolerant: bool = False) -> dict[str, Any]:
    """The whole handler state, read through the storage interface.

    ``tolerant`` (the live state, which rebuild exists to repair): a part that
    cannot be read shows as ``{"unreadable": "<the error>"}`` instead of raising.
    """
    st = storage.state

    def read(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PoetError as exc:
            if not tolerant:
                raise
            return {"unreadable": str(exc)}

    def learning() -> dict[str, Any]:
        with storage.learning.locked():
            return storage.learning.load()

    functions = read(st.functions)
    return {
        "state": {
            fn: {"current": read(lambda: st.current(fn)), "history": read(lambda: st.history(fn))}  # noqa: B023
            for fn in (functions if isinstance(functions, list) else [])
        },
        "learning": read(learning),
        "feedback": {
            "pending": read(lambda: dict(storage.feedback.pending())),
            "processed": read(lambda: dict(storage.feedback.processed())),
        },
    }


def diff(live: Any, rebuilt: Any, path: str = "") -> Iterator[str]:
    """Differences, one line each: ``- PATH: V`` (only live), ``+ PATH: V`` (only rebuilt), ``~ PATH: A -> B``."""
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        for k in sorted(set(live) | set(rebuilt), key=str):
            p = f"{path}/{k}" if path else str(k)
            if k not in rebuilt:
                yield f"- {p}: {_short(live[k])}"
            elif k not in live:
                yield f"+ {p}: {_short(rebuilt[k])}"
            else:
                yield from diff(live[k], rebuilt[k], p)
    elif isinstance(live, list) and isinstance(rebuilt, list) and len(live) == len(rebuilt):
        for i, (a, b) in enumerate(zip(live, rebuilt, strict=True)):
            yield from diff(a, b, f"{path}[{i}]")
    elif live != rebuilt or type(live) is not type(rebuilt):
        yield f"~ {path}: {_short(live)} -> {_short(rebuilt)}"


def _short(v: Any) -> str:
    import orjson

    from ..safetext import clean

    text = clean(orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


__all__ = ["diff", "history", "replay", "snapshot"]
