"""Listing ``events/pending`` into a bounded, ordered window that never breaks per-key order.

A directory listing is not a snapshot. ``readdir`` walks ext4's hash order,
so a file renamed in while the walk is under way may be returned or not,
whatever its name: a listing can show a key's later event and miss an
earlier one that an emitter committed a moment before it (a group commit
renames a batch in id order). Claiming from such a listing handles the later
event first.

The cure is a second listing. Every file a first listing returns was
committed before that listing ended, and so was every earlier event of the
same emitter; a second listing, started after the first ended, returns them
all (unless someone claimed them meanwhile). Names of the second listing that
the first did not return are *unconfirmed*: their keys wait for the next
round. The second listing is taken only when the first may have raced a
commit: the directory's mtime moved during the walk, or was set close enough
to it that the filesystem's coarse clock cannot tell before from during.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import SpoolIOError

# heapq's max-heap primitives (public from Python 3.14, private but present before).
_hq: Any = heapq
_heapify_max: Callable[[list[str]], None] = getattr(_hq, "heapify_max", None) or _hq._heapify_max
_heapreplace_max: Callable[[list[str], str], str] = getattr(_hq, "heapreplace_max", None) or _hq._heapreplace_max

# Filesystem timestamps come from a coarse clock (one scheduler tick, 1-10 ms, behind the
# wall clock): a modification this close to the walk may have happened during it.
RACE_NS = 50_000_000


@dataclass(slots=True)
class Window:
    """The ``window`` smallest pending names in order, and which of them a second listing alone showed."""

    names: list[str]
    count: int
    unconfirmed: set[str] = field(default_factory=set)
    listings: int = 1


class Interrupted(Exception):
    """The listing was given up: ``interrupted()`` said so (a high-priority event waits)."""


def _sort_keys(pending: Path, counter: list[int], interrupted: Callable[[], bool] | None = None) -> Iterator[str]:
    # UUIDv7/derived names sort by time as plain strings; other names get a sort
    # key built from their mtime in the same shape, with the name after a "~".
    with os.scandir(pending) as it:
        for e in it:
            name = e.name
            counter[0] += 1
            if not counter[0] & 1023 and interrupted is not None and interrupted():
                raise Interrupted
            if len(name) == 41 and name[14] in "78" and name[8] == "-":
                yield name
                continue
            try:
                ms = e.stat(follow_symlinks=False).st_mtime_ns // 1_000_000
            except OSError:
                continue
            h = f"{ms:012x}"
            yield f"{h[:8]}-{h[8:12]}-~{name}"


def _smallest(pending: Path, window: int, interrupted: Callable[[], bool] | None = None) -> tuple[list[str], int]:
    """Sorted sort keys of the ``window`` oldest entries, and how many entries there were."""
    counter = [0]
    try:
        # Never hold the whole listing: at a backlog of millions that alone is ~100 MB.
        it = iter(_sort_keys(pending, counter, interrupted))
        keys = list(itertools.islice(it, window))
        rest = next(it, None)
        if rest is None:
            keys.sort()
        else:
            # A max-heap of the keys themselves (they are unique): heapq.nsmallest would wrap each
            # in a tuple (~6 MB more at a 100,000 window) and keep every key it dropped alive
            # through this list until it returned (~10 MB more at a large backlog).
            _heapify_max(keys)
            top = keys[0]
            for k in itertools.chain((rest,), it):
                if k < top:
                    _heapreplace_max(keys, k)
                    top = keys[0]
            keys.sort()
    except OSError as exc:
        raise SpoolIOError(f"cannot list {pending}: {exc.strerror}") from None
    return keys, counter[0]


def _missing(later: list[str], earlier: list[str]) -> Iterable[str]:
    """Keys of sorted ``later`` that sorted ``earlier`` lacks (one merge walk, no set of either)."""
    j, n = 0, len(earlier)
    for k in later:
        while j < n and earlier[j] < k:
            j += 1
        if j >= n or earlier[j] != k:
            yield k


def _name(key: str) -> str:
    return key.partition("~")[2] or key


def list_window(pending: Path, pending_fd: int, window: int, interrupted: Callable[[], bool] | None = None) -> Window:
    """List ``pending`` (open as ``pending_fd``) into a :class:`Window` safe for per-key order.

    ``interrupted`` is asked every 1,024 names; when it says so, the listing
    is given up (:class:`Interrupted`): a high-priority event goes out first.
    """
    m0 = os.fstat(pending_fd).st_mtime_ns
    t0 = time.time_ns()  # wall clock on purpose: it is compared with filesystem timestamps
    args = (pending, window) if interrupted is None else (pending, window, interrupted)
    keys, count = _smallest(*args)
    m1 = os.fstat(pending_fd).st_mtime_ns
    t1 = time.time_ns()
    if m1 == m0 and t0 - m0 > RACE_NS and t1 - m1 > RACE_NS:
        return Window([_name(k) for k in keys], count)
    again, count = _smallest(*args)
    unconfirmed = {_name(k) for k in _missing(again, keys)}
    return Window([_name(k) for k in again], count, unconfirmed, 2)
