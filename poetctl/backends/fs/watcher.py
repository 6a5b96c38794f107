"""Wake-up hints: "something arrived in pending/".

The listing is the truth; this only shortens the wait. On Linux a bare
inotify watch asks the kernel for arrivals only (IN_CREATE, IN_MOVED_TO): the
daemon's own claims rename files *out* of pending, and reporting those would
cost work per event. One thread blocks on the inotify fd and sets the wake
event once per read, however many arrivals the read returned: no Python
object per event. watchdog's observer (used before, and still used where
inotify is missing) spent ~80 us of CPU per arrival in its emitter,
move-pairing queue and dispatcher threads: 0.4 of a core at 5,000 emits/s.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import sys
import threading
from typing import Any

# <sys/inotify.h>
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_CLOEXEC = os.O_CLOEXEC
ARRIVALS = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF
EVENT_HEADER = 16  # int wd; uint32 mask, cookie, len; then len bytes of name
READ_SIZE = 64 * 1024


def start_watcher(directory: str, wake: threading.Event) -> Any:
    """Start a watcher that sets ``wake`` on arrivals in ``directory``; None if unavailable.

    The result has ``stop()`` and ``is_alive()`` (False once the watch is gone,
    e.g. the directory was removed: the caller restarts it and rescans).
    """
    try:
        w = InotifyWake(directory, wake)
    except _NoInotify:
        return _watchdog_watcher(directory, wake)
    except OSError as exc:  # e.g. the inotify watch limit: fall back to rescans
        sys.stderr.write(f"poetctl: warning: file watching unavailable ({exc.strerror or exc}); relying on rescans\n")
        return None
    w.start()
    return w


class _NoInotify(Exception):
    """This platform's libc has no inotify."""


def _libc_inotify() -> tuple[Any, Any]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init1, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        raise _NoInotify from None
    init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
    add_watch.argtypes, add_watch.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    return init1, add_watch


class InotifyWake(threading.Thread):
    """A daemon thread setting ``wake`` whenever a read of the inotify fd returns arrivals.

    ``stop()`` wakes it through a pipe (closing an fd does not interrupt a
    blocked read); it also ends by itself when the watch goes away
    (IN_IGNORED: the directory was removed or its filesystem unmounted).
    """

    def __init__(self, directory: str, wake: threading.Event) -> None:
        super().__init__(name="poetctl-watch", daemon=True)
        init1, add_watch = _libc_inotify()
        self.wake = wake
        fd = init1(IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        # IN_DONT_FOLLOW | IN_ONLYDIR: a spool directory replaced by a link is not watched through it.
        if add_watch(fd, os.fsencode(directory), ARRIVALS | IN_ONLYDIR | IN_DONT_FOLLOW) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        """Ask the thread to end (idempotent; it closes its own fds)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            os.close(self._stop_w)  # the reader sees EOF: poll reports it readable

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread (watchdog's observer interface; stopping first is the caller's job)."""
        if self.ident is not None:
            super().join(timeout)

    def run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._stop_r, select.POLLIN)
            while True:
                if any(fd == self._stop_r for fd, _ in poller.poll()):
                    return
                data = os.read(self._fd, READ_SIZE)
                self.wake.set()  # before looking for IN_IGNORED: the consumer rescans either way
                if _watch_gone(data):
                    return
        except OSError:
            self.wake.set()  # a rescan replaces what the watch would have told
        finally:
            self.stop()
            os.close(self._fd)
            os.close(self._stop_r)


def _watch_gone(data: bytes) -> bool:
    """True if the inotify events in ``data`` include IN_IGNORED (the watch was removed)."""
    i, end = 0, len(data)
    while i + EVENT_HEADER <= end:
        if int.from_bytes(data[i + 4 : i + 8], sys.byteorder) & IN_IGNORED:
            return True
        i += EVENT_HEADER + int.from_bytes(data[i + 12 : i + 16], sys.byteorder)
    return False


def _watchdog_watcher(directory: str, wake: threading.Event) -> Any:
    """watchdog's stock observer (platforms without inotify); None if it cannot start."""
    from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    # watchdog logs when an event races its own shutdown; we rescan anyway.
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)

    class _Hint(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            wake.set()

    obs: Any = Observer()
    try:
        obs.schedule(_Hint(), directory, recursive=False, event_filter=[FileCreatedEvent, FileMovedEvent])
        obs.daemon = True
        obs.start()
    except Exception as exc:
        sys.stderr.write(f"poetctl: warning: file watching unavailable ({exc}); relying on rescans\n")
        return None
    return obs


def _arrivals_observer() -> Any:
    """A watchdog inotify observer reporting arrivals only, with names (``tail --follow`` needs them)."""
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
