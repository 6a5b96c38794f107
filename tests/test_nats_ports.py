"""The test servers choose free ports; a port another process binds between the choice and the server's own bind
is chosen again (on a shared CI machine that race is real), and a failed start leaves no server running."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.natsserver as natsserver
from poetctl.backends.nats import localcluster
from poetctl.backends.nats.localcluster import NatsCluster
from tests.natsserver import NatsServer


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the test's length."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _hello(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        return c.recv(4096)


def test_a_server_whose_chosen_port_was_taken_starts_on_another(
    tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NatsServer's first choice is taken: it starts on a new port, and restart() keeps that one."""
    real = natsserver.free_port
    first = iter([busy_port])
    monkeypatch.setattr(natsserver, "free_port", lambda: next(first, 0) or real())
    with NatsServer(tmp_path / "n") as s:
        assert s.port != busy_port
        assert _hello(s.port).startswith(b"INFO")
        port = s.port
        s.restart()
        assert s.port == port and _hello(port).startswith(b"INFO")


def test_a_cluster_node_whose_chosen_port_was_taken_starts_on_another(
    tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NatsCluster's first client port is taken: the cluster comes up on new ports."""
    real = localcluster.free_port
    first = iter([busy_port])
    monkeypatch.setattr(localcluster, "free_port", lambda: next(first, 0) or real())
    with NatsCluster(tmp_path / "c", size=1) as c:
        assert c.nodes[0].port != busy_port
        assert _hello(c.nodes[0].port).startswith(b"INFO")


def test_a_cluster_that_cannot_start_leaves_nothing_running(tmp_path: Path) -> None:
    """A start that fails for another reason raises, and the nodes that did start are stopped."""
    c = NatsCluster(tmp_path / "c", size=2)
    c.nodes[0].conf.write_text("this is { not a config\n")
    with pytest.raises(RuntimeError):
        c.start(attempts=1)
    assert all(not n.running() for n in c.nodes)
    assert c.nodes[1].proc is None  # the healthy node was started, then stopped by the failed start
