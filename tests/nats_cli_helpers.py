"""Fixtures and helpers shared by the NATS CLI tests: one real server per module, a project set up on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.natsserver import NatsServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for this module."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as s:
        yield s


def cli(args: list[str], cwd: Path, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "POET_NATS_URL": url, **env}
    return subprocess.run(
        [sys.executable, "-m", "poetctl", *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def project(tmp_path: Path, server: NatsServer) -> Path:
    """A poet.toml with a [nats] table (4 partitions, short timers), set up on a wiped server."""
    from poetctl.backends.nats.settings import NatsSettings
    from tests.contract.kits import wipe_nats

    (tmp_path / "poet.toml").write_text(
        "[nats]\npartitions = 4\nack_wait = 1\nlease_ttl = 2\nconnect_timeout = 2\n"
        "[daemon]\nmax_attempts = 3\nbackoff_base = 0\nbackoff_cap = 0\n"
    )
    wipe_nats(NatsSettings(servers=(server.url,)))
    return tmp_path
