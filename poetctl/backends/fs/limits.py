"""Backpressure and throttling on the spool: the pending gauge and the shared token buckets.

One small file, ``run/limits`` (4 KB, read and written through ``mmap``;
changes under its flock):

* the **pending gauge**: how many events (and bytes) are pending. Emitters
  add what they committed (one flock per group), a daemon subtracts what it
  claimed (once per fetch, not per event) and sets the exact count from each
  listing of ``pending/`` (at least every rescan interval). So emit never
  lists the directory; the price is
  accuracy: events added or removed behind poetctl's back (by hand, ``rm``)
  are seen at the next listing, and concurrent emitters may each pass the
  check before either adds (the limit is overshot by at most what they emit
  at that moment). Bytes are counted exactly when added and estimated as
  count x mean event size when a listing resets the count (a listing does
  not stat every file).
* the **token buckets** of ``[limits.sources]``: one per pattern (found by
  the pattern's hash), ``rate`` tokens a second up to a burst of one
  second's worth (at least 1). Shared by every process on the spool; the
  clock is the wall clock (``time.time``), as every process has the same.
"""

from __future__ import annotations

import _thread  # threading's own lock/local types; threading itself stays out of a one-event emit (start-up)
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Sequence

from ...limits import Backpressure, Limits, full_message
from .layout import SpoolLayout
from .runfile import blake2b, locked, open_run_file

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    from ...transport import Outgoing

STATE = "run/limits"
_MAGIC = b"poetctl-limits 1\n"
_SIZE = 4096
_GAUGE = struct.Struct("<qqqq")  # pending, pending bytes, events ever added, bytes ever added
_GAUGE_AT = 32
_RATES_AT = 128
_RATE = struct.Struct("<8sdddq")  # pattern hash, tokens, updated, last refused at, refused total
_RATES = (_SIZE - _RATES_AT) // _RATE.size
POLL = 0.05  # seconds between looks while waiting for room


class SpoolLimits:
    """``run/limits`` of one spool. Opened on first use; every failure to open it means "no limits known"."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout
        self.path = layout.root / STATE
        self.fd = -1
        self.map: mmap.mmap | None = None
        self._mutex = _thread.RLock()  # this process's threads (the flock excludes the others)

    def _open(self) -> mmap.mmap:
        with self._mutex:  # opened once per object, whichever thread comes first
            if self.map is None:
                self.map = self._make()
            return self.map

    def _make(self) -> mmap.mmap:
        fd, _ = open_run_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != _SIZE or os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, _SIZE)
                    os.pwrite(fd, _MAGIC, 0)
                    n = _count(self.layout.pending)  # once, when the file is made: the gauge starts true
                    os.pwrite(fd, _GAUGE.pack(n, 0, 0, 0), _GAUGE_AT)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            m = mmap.mmap(fd, _SIZE)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return m

    def ready(self) -> None:
        """Open (or make) the file now, before this process commits: a gauge made by its first
        update would count that commit twice (the listing it starts from already sees it)."""
        self._quiet(self._open)

    # -- the gauge ----------------------------------------------------------------------------
    def pending(self) -> tuple[int, int]:
        """``(events, bytes)`` pending, as the gauge has them."""
        m = self._open()
        n, b, _, _ = _GAUGE.unpack_from(m, _GAUGE_AT)
        return max(0, n), max(0, b)

    def _update(self, dn: int, db: int, reset: int | None = None) -> None:
        m = self.map or self._open()  # opened: no second trip through the mutex
        with self._mutex:  # locked(), inlined: this runs once per group commit and per daemon fetch
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                n, b, total_n, total_b = _GAUGE.unpack_from(m, _GAUGE_AT)
                if dn > 0:
                    total_n, total_b = total_n + dn, total_b + db
                if reset is not None:
                    n = reset
                    b = reset * (total_b // total_n) if total_n else 0
                else:
                    n, b = max(0, n + dn), max(0, b + db)
                _GAUGE.pack_into(m, _GAUGE_AT, n, b, total_n, total_b)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def added(self, n: int, nbytes: int) -> None:
        """An emitter committed ``n`` events of ``nbytes``."""
        self._quiet(self._update, n, nbytes)

    def taken(self, n: int) -> None:
        """A daemon claimed ``n`` events (their bytes: the mean size)."""
        try:
            m = self._open()
        except OSError:
            return
        _, _, total_n, total_b = _GAUGE.unpack_from(m, _GAUGE_AT)
        self._quiet(self._update, -n, -n * (total_b // total_n if total_n else 0))

    def counted(self, n: int) -> None:
        """A listing found ``n`` pending events: the gauge is exact again."""
        self._quiet(self._update, 0, 0, n)

    def _quiet(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except OSError:
            pass  # the gauge is advisory: never fail a commit or a claim over it

    # -- admission ----------------------------------------------------------------------------
    def admit(self, items: Sequence[Outgoing], limits: Limits, wait: float, partial: bool) -> int:
        """How many leading ``items`` may be committed now (waiting up to ``wait`` s for room); >= 1.

        Raises :class:`Backpressure` when not even the first fits (all of
        them, unless ``partial``). Rate tokens are taken for what is admitted.
        """
        try:
            self._open()
        except OSError:
            return len(items)  # no state file (read-only run/...): limits cannot be kept, emits go on
        want = len(items) if not partial else 1
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            fit, msg = self._room(items, limits)
            if fit >= want:
                break
            if time.monotonic() >= deadline:
                raise Backpressure(msg, retry_after=max(1.0, wait))
            time.sleep(POLL)
        n = fit if partial else len(items)
        if limits.rates:
            n = self._tokens(items[:n], limits, deadline, partial)
        return n

    def _room(self, items: Sequence[Outgoing], limits: Limits) -> tuple[int, str]:
        pending, nbytes = self.pending()
        fit = len(items)
        msg = ""
        if limits.max_pending:
            room = limits.max_pending - pending
            if room < fit:
                fit, msg = max(0, room), full_message(pending, limits.max_pending)
        if limits.max_pending_bytes:
            total = nbytes
            for i, it in enumerate(items[:fit]):
                total += len(it.data)
                if total > limits.max_pending_bytes:
                    fit, msg = i, full_message(nbytes, limits.max_pending_bytes, "bytes pending")
                    break
        return fit, msg

    def _tokens(self, items: Sequence[Outgoing], limits: Limits, deadline: float, partial: bool) -> int:
        """Take a token per item from its source's bucket, in order; how many got one."""
        while True:
            got, wait_s, src = self._take(items, limits, partial)
            if got == len(items) or (partial and got > 0):
                return got
            if time.monotonic() + wait_s > deadline:
                pattern = limits.rate_of(src)
                rule = f'[limits.sources] "{pattern[0]}"' if pattern else "[limits.sources]"
                raise Backpressure(
                    f"source {src!r} is over its rate limit ({rule}); retry in {wait_s:.2f} s",
                    retry_after=wait_s,
                )
            time.sleep(min(wait_s, POLL * 4))

    def _take(self, items: Sequence[Outgoing], limits: Limits, partial: bool) -> tuple[int, float, str]:
        m = self._open()
        now = time.time()
        with locked(self._mutex, self.fd):
            need: dict[int, float] = {}
            rates: dict[int, float] = {}
            got = 0
            for it in items:
                rule = limits.rate_of(it.event.source)
                if rule is not None:
                    off = self._slot(m, rule[0])
                    rates[off] = rule[1]
                    tokens = self._refill(m, off, rule[1], now) - need.get(off, 0.0)
                    if tokens < 1.0:
                        self._refused(m, off, now)
                        wait_s = (1.0 - tokens) / rule[1]
                        if not partial:
                            return 0, wait_s, it.event.source
                        self._spend(m, need, now)
                        return got, wait_s, it.event.source
                    need[off] = need.get(off, 0.0) + 1.0
                got += 1
            self._spend(m, need, now)
            return got, 0.0, ""

    @staticmethod
    def _slot(m: mmap.mmap, pattern: str) -> int:
        h = blake2b(pattern.encode(), digest_size=8).digest()
        first_free = -1
        for i in range(_RATES):
            off = _RATES_AT + i * _RATE.size
            sh = m[off : off + 8]
            if sh == h:
                return off
            if first_free < 0 and sh == b"\0" * 8:
                first_free = off
        off = first_free if first_free >= 0 else _RATES_AT + (h[0] % _RATES) * _RATE.size
        _RATE.pack_into(m, off, h, -1.0, 0.0, 0.0, 0)  # tokens -1: a new bucket, full at first use
        return off

    @staticmethod
    def _refill(m: mmap.mmap, off: int, rate: float, now: float) -> float:
        h, tokens, updated, refused_at, refused = _RATE.unpack_from(m, off)
        burst = max(1.0, rate)
        tokens = burst if tokens < 0 else min(burst, tokens + max(0.0, now - updated) * rate)
        _RATE.pack_into(m, off, h, tokens, now, refused_at, refused)
        return tokens

    @staticmethod
    def _spend(m: mmap.mmap, need: dict[int, float], now: float) -> None:
        for off, n in need.items():
            h, tokens, _, refused_at, refused = _RATE.unpack_from(m, off)
            _RATE.pack_into(m, off, h, tokens - n, now, refused_at, refused)

    @staticmethod
    def _refused(m: mmap.mmap, off: int, now: float) -> None:
        h, tokens, updated, _, refused = _RATE.unpack_from(m, off)
        _RATE.pack_into(m, off, h, tokens, updated, now, refused + 1)

    def close(self) -> None:
        with self._mutex:
            if self.map is not None:
                self.map.close()
                self.map = None
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class View:
    """A read-only copy of ``run/limits`` (what ``status`` shows; it writes nothing)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        n, b, _, _ = _GAUGE.unpack_from(data, _GAUGE_AT)
        self.pending, self.pending_bytes = max(0, n), max(0, b)

    def throttled(self, limits: Limits, within: float = 60.0) -> list[dict[str, Any]]:
        """The source patterns that refused an emit in the last ``within`` seconds."""
        now = time.time()
        out = []
        for pattern, rate in limits.rates:
            h = blake2b(pattern.encode(), digest_size=8).digest()
            for i in range(_RATES):
                off = _RATES_AT + i * _RATE.size
                if self.data[off : off + 8] == h:
                    _, _, _, refused_at, refused = _RATE.unpack_from(self.data, off)
                    if refused_at and now - refused_at <= within:
                        out.append(
                            {
                                "pattern": pattern,
                                "rate_per_s": rate,
                                "refused_total": refused,
                                "last_refused_s_ago": round(now - refused_at, 1),
                            }
                        )
                    break
        return out


def peek(layout: SpoolLayout) -> View | None:
    """``run/limits`` read without changing anything (never created, never through a link); None if absent or odd."""
    try:
        fd = os.open(layout.root / STATE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, _SIZE, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return View(data) if len(data) == _SIZE and data.startswith(_MAGIC) else None


def _count(directory: os.PathLike[str] | str) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


__all__ = ["STATE", "SpoolLimits", "View", "peek"]
