"""A circuit breaker per outbound endpoint, its state shared by every process of a spool.

closed --``failures`` consecutive failures--> open --``cooldown`` elapsed--> half_open
half_open --the probe succeeds--> closed;  --it fails--> open again

While open, calls are not made: the handler asks the daemon to come back when
the cooldown ends (``poetctl.Retry``), so a dead service is not hammered and
its events wait as retries (then dead letters, which ``dead retry`` resends).
Half-open lets one call through (the probe); others wait as if open until
the probe's outcome is recorded or a cooldown has passed.

The state lives in ``<spool>/run/breakers/<name>.json``, replaced atomically
(tmp, fsync, rename) and only when it changes, so ``poetctl status`` in
another process sees it and every daemon of the spool shares it. Reads and
writes are not locked across processes: two processes may both probe, or the
last writer wins a failure count. That costs at most a few extra calls to a
service that is down, which is all the breaker is for; a lock would cost
every call a syscall more. Nothing here imports httpx (``status`` uses it).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..backends.fs.layout import SpoolLayout

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
REL = "run/breakers"
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MAX_STATE_BYTES = 64 * 1024


class BreakerOpen(Exception):
    """The endpoint's breaker is open: do not call it for ``after`` seconds."""

    def __init__(self, name: str, after: float) -> None:
        super().__init__(f"{name}: circuit breaker open (the endpoint kept failing); next try in {after:.0f} s")
        self.after = after


def file_name(name: str) -> str:
    """The state file of breaker ``name``: the name if it is a safe file name, else a hash of it."""
    if _NAME.match(name):
        return f"{name}.json"
    return f"x-{hashlib.sha256(name.encode()).hexdigest()[:16]}.json"


class Breaker:
    """The breaker of endpoint ``name``; ``layout`` None keeps the state in this process only."""

    def __init__(
        self,
        name: str,
        *,
        layout: SpoolLayout | None,
        failures: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.layout = layout
        self.threshold = max(1, failures)
        self.cooldown = max(0.0, cooldown)
        self.clock = clock
        self._lock = threading.Lock()
        self._mem: dict[str, Any] = _closed(name)
        self._file = file_name(name)

    # -- the state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The current state document (state, failures, opened_at, retry_at, last_error, updated_at)."""
        if self.layout is None:
            return dict(self._mem)
        doc = _read(self.layout, self._file)
        return doc if doc is not None else _closed(self.name)

    def _save(self, doc: dict[str, Any]) -> None:
        doc["updated_at"] = round(self.clock(), 3)
        if self.layout is None:
            self._mem = doc
            return
        from ..backends.fs.safefs import make_dir

        d = make_dir(self.layout, REL)
        try:
            d.write_atomic(self._file, orjson.dumps(doc))
        finally:
            d.close()

    # -- the protocol -----------------------------------------------------------------------
    def before(self) -> None:
        """Call before each request: raises :class:`BreakerOpen` when the endpoint must be left alone."""
        with self._lock:
            doc = self.state()
            now = self.clock()
            if doc["state"] == CLOSED:
                return
            retry_at = float(doc.get("retry_at") or 0.0)
            if now < retry_at:
                raise BreakerOpen(self.name, retry_at - now)
            # Cooldown over: this call is the probe; others wait one more cooldown for its outcome.
            doc.update(state=HALF_OPEN, retry_at=round(now + self.cooldown, 3))
            self._save(doc)

    def success(self) -> None:
        """The endpoint answered (2xx, or a 4xx: it is alive): close the breaker."""
        with self._lock:
            doc = self.state()
            if doc["state"] != CLOSED or doc.get("failures"):
                self._save(_closed(self.name))

    def failure(self, reason: str) -> None:
        """A transport error or 5xx: count it; open at ``failures`` in a row, or at once from half-open."""
        with self._lock:
            doc = self.state()
            now = self.clock()
            n = int(doc.get("failures") or 0) + 1
            doc.update(failures=n, last_error=reason[:300])
            if doc["state"] == HALF_OPEN or n >= self.threshold:
                doc.update(state=OPEN, opened_at=round(now, 3), retry_at=round(now + self.cooldown, 3))
            self._save(doc)


def _closed(name: str) -> dict[str, Any]:
    return {"name": name, "state": CLOSED, "failures": 0, "opened_at": None, "retry_at": None, "last_error": None}


def _read(layout: SpoolLayout, fname: str) -> dict[str, Any] | None:
    from ..backends.fs.safefs import open_dir

    d = open_dir(layout, REL)
    if d is None:
        return None
    try:
        return _parse(d.read(fname, MAX_STATE_BYTES))
    except Exception:
        return None  # absent, a link, damaged: treated as closed (the next failure rewrites it)
    finally:
        d.close()


def _parse(data: bytes) -> dict[str, Any] | None:
    doc = orjson.loads(data)
    if not isinstance(doc, dict) or doc.get("state") not in (CLOSED, OPEN, HALF_OPEN):
        return None
    return doc


def breaker_states(layout: SpoolLayout) -> list[dict[str, Any]]:
    """Every breaker's state document, by name (for ``poetctl status``); [] when none was ever written."""
    from ..backends.fs.safefs import open_dir

    try:
        d = open_dir(layout, REL)
    except Exception:
        return []
    if d is None:
        return []
    out = []
    try:
        for name in sorted(d.names()):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                doc = _parse(d.read(name, MAX_STATE_BYTES))
            except Exception:
                doc = None
            if doc is not None:
                out.append(doc)
    finally:
        d.close()
    return out
