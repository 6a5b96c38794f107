"""The backends the contract suite runs on, and what it needs to know about each.

A backend joins the suite by adding a :class:`Kit` to :data:`KITS`: how to
make a transport on a fake clock, how to simulate the death of a consumer's
process, and how to plant input that cannot be read. Today: ``memory``,
the filesystem spool (``fs``) and ``nats`` (a real nats-server, see :func:`_nats_make`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    # Fetches by priority class (issue 15): every backend (NATS: its priority lanes, backends/nats/lanes.py).
    priority: bool = True


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

# -- NATS: one real nats-server for the test session (started on first use), wiped for every transport.
# Its real-time timers are short so crash cases wait about two seconds: AckWait 1 s, leases expire after 2 s.
_NATS: dict[str, Any] = {}


def _nats_server(tmp: Path) -> Any:
    if "server" not in _NATS:
        import atexit
        import tempfile

        from tests.natsserver import NatsServer

        store = Path(tempfile.mkdtemp(prefix="poet-nats-contract-"))
        server = NatsServer(store).start()
        _NATS["server"] = server

        def stop() -> None:
            server.stop()
            import shutil

            shutil.rmtree(store, ignore_errors=True)

        atexit.register(stop)
    return _NATS["server"]


def _nats_settings(url: str) -> Any:
    from poetctl.backends.nats.settings import NatsSettings

    return NatsSettings(servers=(url,), partitions=8, ack_wait=1.0, lease_ttl=2.0, duplicate_window=120.0)


# The transports _nats_make made, until the next wipe stops them (see _stop_earlier).
_LIVE: list[Any] = []


def _nats_make(clock: FakeClock, tmp: Path) -> Transport:
    from poetctl.backends.nats.transport import NatsTransport

    settings = _nats_settings(_nats_server(tmp).url)
    wipe_nats(settings)
    t = NatsTransport(settings, clock=clock, setup=True, probe_every=0.0)
    _LIVE.append(t)
    return t


def _stop_earlier() -> None:
    """Stop every transport _nats_make made for an earlier test, and its consumers, before a wipe.

    A consumer's keeper thread announces it (``m.<name>`` in the lease bucket) every second for as long as its
    connection is open, into whatever bucket exists then: one that outlived its test (a transport or Harness
    never closed) joins the next test's membership, and that test's consumer gets a fair share of half the
    partitions, so its fetches see half the stream (the priority cases then failed now and then, more under load).
    """
    while _LIVE:
        t = _LIVE.pop()
        for c in list(t._consumers):
            c.crash()  # the keeper stops; nothing more is sent (its leases go with the wipe)
        t.close()


def wipe_nats(settings: Any) -> None:
    """Delete poetctl's streams and buckets (a fresh backend for the next test); first stop what earlier tests
    left running (:func:`_stop_earlier`)."""
    from poetctl.backends.nats.link import Link

    _stop_earlier()
    link = Link(settings)

    async def go() -> None:
        from nats.js.errors import NotFoundError

        names = [settings.stream, settings.dead_stream, settings.corrupt_stream]
        names += [f"KV_{b}" for b in (settings.state_bucket, settings.lease_bucket, settings.function_bucket)]
        names.append(f"KV_{settings.bucket_prefix}_LIMITS")  # [limits.sources] rate buckets
        for n in names:
            try:
                await link.jsm.delete_stream(n)
            except NotFoundError:
                pass

    try:
        link.run(go())
    finally:
        link.close()


def _nats_crash(c: Consumer) -> None:
    """The consumer's process died: stop it cold, then wait (real time) until its leases have expired."""
    import time

    from poetctl.backends.nats.consumer import NatsConsumer

    assert isinstance(c, NatsConsumer)
    held = c.crash()
    t = c.t
    deadline = time.monotonic() + 60
    while held and time.monotonic() < deadline:

        async def left(parts: list[int] = held) -> list[int]:
            from nats.js.errors import KeyDeletedError, KeyNotFoundError

            out = []
            for p in parts:
                try:
                    await t.lease_kv.get(f"p{p}")
                    out.append(p)
                except (KeyNotFoundError, KeyDeletedError):
                    pass
            return out

        held = t.link.run(left())
        if held:
            time.sleep(0.1)
    assert not held, "leases of a crashed consumer did not expire"


def _nats_plant(t: Transport, name: str, data: bytes) -> None:
    from poetctl.backends.nats.transport import NatsTransport

    assert isinstance(t, NatsTransport)

    async def go() -> None:
        await t.link.js.publish("poet.p.0.planted", data, headers={"Nats-Msg-Id": name, "Poet-Id": name})

    t.link.run(go())


KITS = {
    "memory": Kit("memory", lambda clock, _tmp: MemoryTransport(clock=clock), _memory_crash, _memory_plant),
    "fs": Kit("fs", lambda clock, tmp: FsTransport(tmp / "spool", clock=clock), _fs_crash, _fs_plant, FS_RESCAN),
    "nats": Kit("nats", _nats_make, _nats_crash, _nats_plant),
}
