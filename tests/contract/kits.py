"""The backends the contract suite runs on, and what it needs to know about each.

A backend joins the suite by adding a :class:`Kit` to :data:`KITS`: how to
make a transport on a fake clock, how to simulate the death of a consumer's
process, and how to plant input that cannot be read. Today: ``memory`` and
the filesystem spool (``fs``); next: NATS.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from poetctl.backends.fs.consumer import FsConsumer
from poetctl.backends.fs.transport import FsTransport
from poetctl.backends.memory import MemoryConsumer, MemoryTransport
from poetctl.testing import FakeClock, Harness
from poetctl.transport import Consumer, Outgoing, Transport

START = 1_800_000_000.0  # 2027-01-15: later than any event's (real) timestamp; expiries are set from this clock

Emit = Callable[..., Outgoing]
MakeHarness = Callable[..., Harness]


@dataclass(frozen=True)
class Kit:
    """What the suite needs to know about one backend."""

    name: str
    make: Callable[[FakeClock, Path], Transport]
    crash: Callable[[Consumer], None]  # the consumer's process died (its leases stay)
    plant_unreadable: Callable[[Transport, str, bytes], None]  # input under a name, as if dropped in by hand
    # Clock seconds after which a live consumer's fetch takes over a dead one's work by itself
    # (memory: at once; fs: the rescan interval; NATS: AckWait).
    takeover_after: float = 0.0


def _memory_crash(c: Consumer) -> None:
    assert isinstance(c, MemoryConsumer)
    c.crash()


def _memory_plant(t: Transport, name: str, data: bytes) -> None:
    assert isinstance(t, MemoryTransport)
    t.put_raw(name, data)


def _fs_crash(c: Consumer) -> None:
    assert isinstance(c, FsConsumer)
    c._simulate_death()  # locks let go (fds closed, files left), mover SIGKILLed, owner judged dead


def _fs_plant(t: Transport, name: str, data: bytes) -> None:
    assert isinstance(t, FsTransport)
    t.layout.init()
    fd = os.open(t.layout.pending / f"{name}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


FS_RESCAN = 5.0  # FsConsumer's default rescan interval, by the transport's clock

KITS = {
    "memory": Kit("memory", lambda clock, _tmp: MemoryTransport(clock=clock), _memory_crash, _memory_plant),
    "fs": Kit("fs", lambda clock, tmp: FsTransport(tmp / "spool", clock=clock), _fs_crash, _fs_plant, FS_RESCAN),
}
