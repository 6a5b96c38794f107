"""Which handler each worker is running, kept where a process death cannot erase it.

A handler that ends the process (``os._exit``, a signal, the OOM killer) leaves
no exception to record. So before a handler runs, its worker writes "running
<event> <handler>" into its own slot at the head of the journal file, and
clears the slot when the handler returns or raises. The slots are a shared
memory mapping of the file: a write is a memory copy (no system call on the
hot path) and, like an unsynced ``write``, survives the death of the process
(the page cache belongs to the kernel). Recovery reads the dead owner's
journal; a set slot means the daemon died while that handler ran, and counts
as a failed attempt (see :data:`poetctl.daemon.retries.DIED`).

Journal file layout (``events/inflight/<owner>/_journal``)::

    HEADER_SIZE bytes   b"#poetctl-journal 2 <slots> <slot size>" padded, ending in "\\n"
    slots x SLOT_SIZE   b"R\\t" + JSON [id, handler, checksum, attempt, at] + b"\\n" (set)
                        or a first byte b" " (idle); the rest of a slot is left over bytes
    then                journal lines (see :class:`poetctl.backends.fs.journal.Journal`)

A slot's first byte is written last, so a slot is never seen half-written.
"""

from __future__ import annotations

import mmap
import os
import time

import orjson

MAGIC = b"#poetctl-journal 2 "
HEADER_SIZE = 64
SLOT_SIZE = 512
_IDLE = 0x20  # b" "
_SET = 0x52  # b"R"


def header(slots: int) -> bytes:
    """The head of a new journal: the header line and ``slots`` idle slots."""
    line = MAGIC + b"%d %d" % (slots, SLOT_SIZE)
    return line.ljust(HEADER_SIZE - 1) + b"\n" + (b" " * (SLOT_SIZE - 1) + b"\n") * slots


def head_size(data: bytes) -> int:
    """Bytes taken by the header and slots of journal ``data`` (0 for a journal without them)."""
    if not data.startswith(MAGIC):
        return 0
    try:
        slots, size = (int(x) for x in data[len(MAGIC) : HEADER_SIZE].split()[:2])
    except ValueError:
        return 0
    return HEADER_SIZE + slots * size if size == SLOT_SIZE and slots >= 0 else 0


def parse_slots(data: bytes) -> list[tuple[str, str, str | None, int, float]]:
    """The set slots of journal ``data``: ``(event id, handler, checksum, attempt, at)`` each."""
    end = head_size(data)
    out = []
    for off in range(HEADER_SIZE, end, SLOT_SIZE):
        if data[off] != _SET:
            continue
        nl = data.find(b"\n", off, off + SLOT_SIZE)
        if nl < 0:
            continue
        try:
            eid, handler, checksum, attempt, at = orjson.loads(data[off + 2 : nl])
            cs = checksum if isinstance(checksum, str) else None
            out.append((str(eid), str(handler), cs, int(attempt), float(at)))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            continue
    return out


class RunningSlots:
    """The writable mapping of one journal's slots. Slot ``i`` belongs to worker ``i`` only."""

    def __init__(self, fd: int, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(fd, HEADER_SIZE + slots * SLOT_SIZE) if slots else None

    def set(self, slot: int, event_id: str, handler: str, checksum: str | None, attempt: int) -> None:
        """Worker ``slot`` is about to run ``handler`` on the event (attempt number ``attempt``)."""
        m = self._map
        if m is None or slot >= self.slots:
            return
        body = orjson.dumps([event_id, handler, checksum, attempt, time.time()]) + b"\n"
        off = HEADER_SIZE + slot * SLOT_SIZE
        if len(body) > SLOT_SIZE - 2:
            return  # cannot happen with valid ids and handler names (both bounded)
        m[off + 2 : off + 2 + len(body)] = body
        m[off + 1] = 0x09  # b"\t"
        m[off] = _SET

    def clear(self, slot: int) -> None:
        m = self._map
        if m is not None and slot < self.slots:
            m[HEADER_SIZE + slot * SLOT_SIZE] = _IDLE

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def create_head(fd: int, slots: int) -> int:
    """Start the journal at ``fd`` (opened ``O_APPEND``) afresh with ``slots`` idle slots; its size."""
    os.ftruncate(fd, 0)
    view = memoryview(header(slots))
    size = len(view)
    while view:
        view = view[os.write(fd, view) :]
    return size
