"""Wake-up hints from watchdog: "something arrived in pending/".

The listing is the truth; this only shortens the wait. On Linux the inotify
watch asks the kernel for arrivals only (IN_CREATE, IN_MOVED_TO): the
daemon's own claims rename files *out* of pending, and reporting those would
cost Python work per event and, worse, hold every later event in watchdog's
0.5 s move-pairing queue (the IN_MOVED_FROM head delays everything behind it).
Elsewhere, or if watchdog's internals differ, the stock observer is used.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any


def start_watcher(directory: str, wake: threading.Event) -> Any:
    """Start an observer that sets ``wake`` on arrivals in ``directory``; None if unavailable."""
    from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    # watchdog logs when an event races its own shutdown; we rescan anyway.
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)

    class _Hint(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            wake.set()

    obs: Any
    try:
        obs = _arrivals_observer()
    except Exception:
        obs = Observer()
    try:
        obs.schedule(_Hint(), directory, recursive=False, event_filter=[FileCreatedEvent, FileMovedEvent])
        obs.daemon = True
        obs.start()
    except Exception as exc:  # e.g. the inotify watch limit: fall back to rescans
        sys.stderr.write(f"poetctl: warning: file watching unavailable ({exc}); relying on rescans\n")
        return None
    return obs


def _arrivals_observer() -> Any:
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
    from watchdog.observers.inotify_c import InotifyConstants as C

    class ArrivalsEmitter(InotifyEmitter):
        def get_event_mask_from_filter(self) -> Any:
            return C.IN_CREATE | C.IN_MOVED_TO | C.IN_DELETE_SELF

    obs = InotifyObserver()
    if not hasattr(obs, "_emitter_class"):
        raise RuntimeError("unexpected watchdog version")
    obs._emitter_class = ArrivalsEmitter
    return obs
