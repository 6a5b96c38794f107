"""Consumer groups on a real nats-server: three `poetctl daemon --mode nats` processes share the partitions,
each event is handled once and in its key's order, and a SIGKILLed daemon's partitions move to the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.natsserver import NatsServer

EVENTS = int(os.environ.get("POET_TEST_GROUP_EVENTS", "4000"))  # the 10,000, scaled to a 2-core machine
KEYS = 20
PARTITIONS = 16

HANDLERS = """
import json, os
def register(router):
    fd = os.open(os.environ["POET_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pid = os.getpid()
    def handle(event):
        # One write per line (O_APPEND): the file's order is the order of handling across the daemons.
        os.write(fd, (json.dumps([event.correlation_id, event.payload["metrics"]["i"], pid]) + "\\n").encode())
    router.subscribe("system.metrics", handle, name="record")
"""


def log_of(p: subprocess.Popen[bytes]) -> str:
    """The tail of a daemon's stderr (each daemon logs to daemon.<pid>.log in the test's directory)."""
    path = Path(str(p.args[-1])).parent / f"daemon.{p.pid}.log"  # type: ignore[index]
    return path.read_text(errors="replace")[-1200:] if path.exists() else ""


def wait_for(cond: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]], bound: float = 300) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after a generous bound or if a daemon exits."""
    deadline = time.monotonic() + bound
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a daemon exited ({p.returncode}) while waiting for {what}: {log_of(p)}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server for this test."""
    with NatsServer(tmp_path / "nats") as s:
        yield s


def test_three_daemons_share_keys_in_order_and_a_killed_ones_partitions_move(
    tmp_path: Path, server: NatsServer
) -> None:
    """Three daemons: every event handled, once (except the killed daemon's in-flight ones, at most twice), each
    key in emit order; SIGKILL one while work remains and its partitions' remaining events go to the others."""
    from poetctl.backends.nats import subjects
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.config import Config
    from poetctl.router import EventRouter

    (tmp_path / "poet.toml").write_text(
        f"[nats]\npartitions = {PARTITIONS}\nack_wait = 2\nlease_ttl = 4\nconnect_timeout = 2\n"
    )
    (tmp_path / "h.py").write_text(HANDLERS)
    log = tmp_path / "handled.log"
    settings = NatsSettings(servers=(server.url,), partitions=PARTITIONS, ack_wait=2, lease_ttl=4)
    t = NatsTransport(settings, setup=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # All events first (in per-key emit order), so every partition has work when the daemons start.
        router = EventRouter(transport=t, config=Config())
        for start in range(0, EVENTS, 500):
            built = [
                router.build(
                    "system.metrics",
                    {"service": "s", "metrics": {"i": i // KEYS}},
                    correlation_id=f"k{i % KEYS}",
                )
                for i in range(start, min(EVENTS, start + 500))
            ]
            assert all(router.commit_events(built))
        env = {**os.environ, "POET_NATS_URL": server.url, "POET_TEST_LOG": str(log)}
        cmd = [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--handlers", str(tmp_path / "h.py")]

        def spawn() -> subprocess.Popen[bytes]:
            # stderr to a file, kept for a failure's diagnosis (a pipe nobody reads would also fill up).
            err = open(tmp_path / "daemon.starting.log", "wb")  # noqa: SIM115 - renamed below, the child keeps it
            try:
                p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
            finally:
                err.close()
            os.rename(tmp_path / "daemon.starting.log", tmp_path / f"daemon.{p.pid}.log")
            return p

        procs = [spawn() for _ in range(3)]

        def lines() -> list[tuple[str, int, int]]:
            if not log.exists():
                return []
            return [tuple(json.loads(x)) for x in log.read_text().splitlines() if x.endswith("]")]  # type: ignore[misc]

        host = os.uname().nodename

        def leases() -> dict[int, str]:
            async def go() -> dict[int, str]:
                from nats.js.errors import KeyDeletedError, KeyNotFoundError

                out = {}
                for p in range(PARTITIONS):
                    try:
                        out[p] = (await t.lease_kv.get(f"p{p}")).value.decode()
                    except (KeyNotFoundError, KeyDeletedError):
                        pass
                return out

            return t.link.run(go())

        # The victim: the daemon holding the most partitions once a tenth of the work is done (most remains).
        wait_for(lambda: len(lines()) >= EVENTS // 10, "a tenth of the events to be handled", procs)
        owners = leases()
        victim = max(procs, key=lambda p: sum(1 for who in owners.values() if who.startswith(f"{host}-{p.pid}-")))
        held = {p for p, who in owners.items() if who.startswith(f"{host}-{victim.pid}-")}
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        cut = len(lines())
        survivors = [p for p in procs if p is not victim]
        assert held, "the victim held no partition when killed"
        keys_of = defaultdict(set)
        for k in range(KEYS):
            keys_of[subjects.partition_of(f"correlation_id=k{k}", PARTITIONS)].add(f"k{k}")

        # The observable move: every event handled (the victim's partitions included), by the survivors.
        want = {(f"k{k}", i) for k in range(KEYS) for i in range(EVENTS // KEYS)}
        wait_for(lambda: {(k, i) for k, i, _ in lines()} >= want, "every event to be handled", survivors)
        for p in survivors:
            p.send_signal(signal.SIGTERM)
        for p in survivors:
            assert p.wait(60) == 0, log_of(p)
        seen = lines()
        after = seen[cut:]
        moved = {k for k, _, pid in after if any(k in keys_of[p] for p in held)}
        assert moved, "no event of the victim's partitions was left to move"
        assert all(pid != victim.pid for _, _, pid in after)
        per_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for k, i, pid in seen:
            per_key[k].append((i, pid))
        assert set(per_key) == {f"k{k}" for k in range(KEYS)}
        for k, handled in per_key.items():
            first = list(dict.fromkeys(i for i, _ in handled))
            assert first == list(range(EVENTS // KEYS)), f"{k}: handled out of emit order"
            for pid in {pid for _, pid in handled}:
                mine = [i for i, q in handled if q == pid]
                assert mine == sorted(mine), f"{k}: daemon {pid} handled it out of emit order"
            counts: dict[int, list[int]] = defaultdict(list)
            for i, pid in handled:
                counts[i].append(pid)
            for i, pids in counts.items():
                # Twice only when the victim handled it and died before its ack reached the server.
                assert len(pids) == 1 or (len(pids) == 2 and pids[0] == victim.pid), f"{k}/{i} handled by {pids}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        t.close()
