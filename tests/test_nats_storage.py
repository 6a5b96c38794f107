"""The handlers' stores in JetStream KV (NatsStorage), beyond the stores contract (test_contract_storage.py):
a learning document larger than one NATS message, a lock shared by processes, and the built-in handlers running
in nats mode with `state show/list --mode nats` reading the KV bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from poetctl.backends.nats.settings import NatsSettings
from poetctl.backends.nats.storage import NatsStorage
from poetctl.backends.nats.transport import NatsTransport
from poetctl.storage import Storage
from poetctl.testing import FakeClock
from tests.contract.kits import _nats_server, wipe_nats


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[NatsTransport]:
    """A fresh NATS backend (streams and buckets wiped and set up) on the shared test server."""
    settings = NatsSettings(servers=(_nats_server(tmp_path).url,), partitions=4, ack_wait=1.0, lease_ttl=2.0)
    wipe_nats(settings)
    t = NatsTransport(settings, setup=True, clock=FakeClock(1_700_000_000.0))
    yield t
    t.close()


@pytest.fixture
def stores(transport: NatsTransport) -> Storage:
    """The three stores in KV."""
    s = transport.storage()
    assert isinstance(s, NatsStorage)
    return s


def test_a_learning_document_larger_than_a_message_round_trips(stores: Storage) -> None:
    """A learning document of ~2.5 MiB (over NATS's 1 MiB message limit) is saved in chunks and read back whole;
    saving a smaller one afterwards leaves no stale chunk behind in what is read."""
    big = {f"d{i}": {"at": float(i), "pad": "x" * 200} for i in range(12000)}
    with stores.learning.locked():
        doc = stores.learning.load()
        doc["detections"] = big
        stores.learning.save(doc)
    with stores.learning.locked():
        back = stores.learning.load()
        assert back["detections"] == big
        back["detections"] = {"only": {"at": 1.0}}
        stores.learning.save(back)
    with stores.learning.locked():
        assert stores.learning.load()["detections"] == {"only": {"at": 1.0}}


def test_the_learning_lock_excludes_other_processes(transport: NatsTransport) -> None:
    """Two stores (as two daemons would have) increment one counter under locked(): no update is lost."""
    a, b = NatsStorage(transport), NatsStorage(transport)
    a.learning.owner, b.learning.owner = "daemon-a", "daemon-b"

    def bump(s: NatsStorage) -> None:
        for _ in range(15):
            with s.learning.locked():
                doc = s.learning.load()
                doc["decisions"]["n"] = doc["decisions"].get("n", 0) + 1
                s.learning.save(doc)

    threads = [threading.Thread(target=bump, args=(s,)) for s in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    with a.learning.locked():
        assert a.learning.load()["decisions"]["n"] == 30


def test_versions_that_are_not_key_tokens_are_kept(stores: Storage) -> None:
    """Versions with '.' and '+' (not KV key tokens) are stored and listed under their own names."""
    stores.state.record_version("fa", "1.2.0+build.7", {"reason": "r"})
    stores.state.record_version("fa", "1.3.0", {"reason": "r"}, previous_version="1.2.0+build.7")
    assert [h["version"] for h in stores.state.history("fa")] == ["1.2.0+build.7", "1.3.0"]
    assert stores.state.functions() == ["fa"]


def test_builtin_handlers_keep_function_state_in_kv(transport: NatsTransport, tmp_path: Path) -> None:
    """daemon --mode nats runs the built-in handlers: a function.update moves the function's version in KV, and
    `state show/list --mode nats` print it (66 for a function without state)."""
    url = transport.settings.servers[0]
    (tmp_path / "poet.toml").write_text("[nats]\npartitions = 4\nack_wait = 1\nlease_ttl = 2\n")
    env = {**os.environ, "POET_NATS_URL": url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "poetctl", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    from conftest import load_samples

    payload = load_samples()["function.update"]["valid"][0]
    fn, new, old = payload["function_name"], payload["new_version"], payload["old_version"]
    r = cli("emit", "--mode", "nats", "function.update", json.dumps(payload))
    assert r.returncode == 0, r.stderr
    r = cli("daemon", "--mode", "nats", "--once")
    assert r.returncode == 0, r.stderr
    r = cli("state", "show", fn, "--mode", "nats", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["current"]["version"] == new and doc["current"]["previous_version"] == old
    assert [h["version"] for h in doc["history"]] == [new]
    r = cli("state", "list", "--mode", "nats", "-o", "jsonl")
    assert r.returncode == 0 and [json.loads(x)["function_name"] for x in r.stdout.splitlines()] == [fn]
    r = cli("state", "show", "never_seen", "--mode", "nats")
    assert r.returncode == 66 and "no state for function 'never_seen'" in r.stderr
