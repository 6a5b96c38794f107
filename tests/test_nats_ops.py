"""tail, tail -f, replay, correlate and status: the same scenario on the spool and on NATS (a real nats-server).

Each test runs twice, ``[fs]`` (delivery mode local_only, a spool) and
``[nats]`` (``POET_MODE=nats``, a fresh JetStream per test), and asserts the
same output shapes and exit codes; NATS-only figures are checked where the
spool has no equivalent.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.natscluster import wait_until
from tests.natsserver import NatsServer

TOML = (
    "[nats]\npartitions = 4\nack_wait = 1\nlease_ttl = 2\nconnect_timeout = 2\n"
    "[daemon]\nmax_attempts = 2\nbackoff_base = 0\nbackoff_cap = 0\n"
)
HANDLERS = """
import json, os, time
def register(router):
    def seen(event):
        with open(os.environ["POET_TEST_LOG"], "a") as fh:
            fh.write(event.id + "\\n")
        gate = os.environ.get("POET_TEST_GATE")
        if gate and event.payload.get("service") == "slow":
            open(gate + ".entered", "w").close()
            while not os.path.exists(gate):
                time.sleep(0.01)
    router.subscribe("system.health", seen, name="seen")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as s:
        yield s


@dataclass
class Env:
    """One backend under test: run the CLI against it."""

    kind: str
    root: Path
    url: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
        e.update(
            POET_SPOOL=str(self.root / "spool"),
            POET_MODE="nats" if self.kind == "nats" else "local_only",
            POET_TEST_LOG=str(self.root / "seen.log"),
            **extra,
        )
        if self.url:
            e["POET_NATS_URL"] = self.url
        return e

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "poetctl", *args]

    def cli(self, *args: str, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            env=self.env(**extra),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def emit(self, service: str, status: str = "healthy", corr: str | None = None, type_: str = "system.health") -> str:
        extra = ["--correlation-id", corr] if corr else []
        payload = {"service": service, "status": status}
        return self.ok("emit", type_, json.dumps(payload), *extra).strip()

    def drain(self) -> None:
        r = self.cli("daemon", "--once", "--handlers", str(self.root / "h.py"), "--workers", "1")
        assert r.returncode in (0, 1), r.stderr

    def seen(self) -> list[str]:
        p = self.root / "seen.log"
        return p.read_text().split() if p.exists() else []


@pytest.fixture(params=["fs", "nats"])
def be(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    """A project on the spool, or on a wiped and set-up JetStream."""
    (tmp_path / "poet.toml").write_text(TOML)
    (tmp_path / "h.py").write_text(HANDLERS)
    if request.param == "nats":
        from poetctl.backends.nats.settings import NatsSettings
        from tests.contract.kits import wipe_nats

        server: NatsServer = request.getfixturevalue("server")
        wipe_nats(NatsSettings(servers=(server.url,)))
        e = Env("nats", tmp_path, server.url)
        e.ok("nats", "setup")
        return e
    e = Env("fs", tmp_path)
    e.ok("init")
    return e


def _ids(out: str) -> list[str]:
    return [json.loads(x)["id"] for x in out.splitlines() if x.strip()]


def test_tail_patterns_lines_since_state_and_exit_codes(be: Env) -> None:
    """tail selects by topic pattern, -n, --since (a start time), --state; no match exits 1 naming the filter."""
    a = be.emit("a")
    mid = datetime.datetime.now(datetime.UTC).isoformat()
    b = be.emit("b")
    c = be.emit("c")
    assert _ids(be.ok("tail", "-o", "jsonl")) == [a, b, c]
    assert _ids(be.ok("tail", "-n", "2", "-o", "jsonl")) == [b, c]
    assert _ids(be.ok("tail", "poet/system/*", "-o", "jsonl")) == [a, b, c]
    assert _ids(be.ok("tail", "--since", mid, "-o", "jsonl")) == [b, c]
    assert _ids(be.ok("tail", "--until", mid, "-o", "jsonl")) == [a]
    r = be.cli("tail", "poet/functions/**", "-o", "jsonl")
    assert r.returncode == 1 and "no events match pattern 'poet/functions/**'" in r.stderr
    r = be.cli("tail", "--state", "processed", "-o", "jsonl")
    assert r.returncode == 1 and r.stdout == ""
    be.drain()
    assert _ids(be.ok("tail", "--state", "processed", "-o", "jsonl")) == [a, b, c]
    table = be.ok("tail", "-o", "table", "-n", "1")
    assert table.splitlines()[0].split() == ["time", "type", "topic", "id", "correlation", "state"]
    assert table.splitlines()[1].split()[-1] == "processed" and c in table
    r = be.cli("tail", "--state", "bogus")
    assert r.returncode == 2
    r = be.cli("tail", "-n", "0")
    assert r.returncode == 1 and "no events requested" in r.stderr


def test_tail_follow_prints_new_events_once_and_honours_count_and_idle(be: Env) -> None:
    """tail -f prints the last N, then each new matching event once (not the others); --count exits 0;
    --idle-timeout with nothing new exits 1."""
    first = be.emit("first")
    proc = subprocess.Popen(
        be.argv("tail", "-f", "-n", "1", "--count", "3", "-o", "jsonl", "--type", "system.health"),
        cwd=be.root,
        env=be.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the initial event: from here on it is following
        assert json.loads(line)["id"] == first
        be.ok("emit", "system.alert", json.dumps(_alert()))  # another type: not shown
        x = be.emit("x")
        y = be.emit("y")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert _ids(out) == [x, y]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = be.cli("tail", "-f", "-n", "0", "--idle-timeout", "0.5", "poet/functions/*")
    assert r.returncode == 1 and "no events match" in r.stderr


def _alert() -> dict[str, object]:
    from conftest import load_samples

    sample: dict[str, object] = load_samples()["system.alert"]["valid"][0]
    return sample


def test_replay_reruns_handlers_with_mark_and_twice_within_the_duplicate_window(be: Env) -> None:
    """replay --id republishes a processed event (same id, metadata.replayed), the handler runs again; a second
    replay right after runs it a third time (not deduplicated); selectors, --dry-run and exit codes as on the spool."""
    a = be.emit("a")
    b = be.emit("b")
    be.drain()
    assert sorted(be.seen()) == sorted([a, b])
    r = be.cli("replay")
    assert r.returncode == 2 and "needs a selector" in r.stderr
    assert be.ok("replay", "--id", a, "--dry-run").split() == [a]
    assert be.ok("replay", "--id", a).split() == [a]
    [stored] = [json.loads(x) for x in be.ok("tail", "--state", "pending", "-o", "jsonl").splitlines()]
    assert stored["id"] == a and stored["metadata"]["replayed"]["count"] == 1
    assert stored["metadata"]["replayed"]["from"] == "processed"
    r = be.cli("replay", "--id", a)  # pending now: nothing to replay
    assert r.returncode == 1 and "nothing was replayed" in r.stderr
    be.drain()
    assert be.ok("replay", "--id", a).split() == [a]
    be.drain()
    assert be.seen().count(a) == 3 and be.seen().count(b) == 1
    [stored] = [json.loads(x) for x in be.ok("tail", "--state", "processed", "-o", "jsonl").splitlines()][:1]
    assert stored["id"] == a and stored["metadata"]["replayed"]["count"] == 2
    assert _ids(be.ok("tail", "-o", "jsonl")).count(a) == 1  # one copy of the event, not one per replay
    r = be.cli("replay", "--from", "dead", "--all")
    assert r.returncode == 1 and "no dead event matched" in r.stderr
    if be.kind == "nats":
        from tests.test_nats_keysubject import assert_key_subjects

        assert assert_key_subjects(be.url) == 2  # replay's copy is on a key subject too


def test_replay_from_dead_puts_the_letter_back(be: Env) -> None:
    """replay --from dead requeues a dead letter with its error summary in the mark; it leaves the dead list."""
    poison = be.emit("p", status="unhealthy")
    (be.root / "h.py").write_text(
        HANDLERS + "\n    def bad(event):\n        raise ValueError('poison')\n"
        "    router.subscribe('system.health', bad, name='bad')\n"
    )
    be.drain()
    assert _ids(be.ok("dead", "list", "-o", "jsonl")) == [poison]
    assert be.ok("replay", "--from", "dead", "--id", poison).split() == [poison]
    assert be.ok("dead", "list", "-o", "jsonl") == ""
    [stored] = [json.loads(x) for x in be.ok("tail", "--state", "pending", "-o", "jsonl").splitlines()]
    mark = stored["metadata"]["replayed"]
    assert mark["from"] == "dead" and "poison" in mark["error"]["error"]


def test_correlate_builds_the_same_tree(be: Env) -> None:
    """correlate gives the same nodes, parents and states on both backends; --expect; unknown id exits 1."""
    root = be.emit("root", corr="corr-1")
    child = be.ok("emit", "system.health", '{"service":"k","status":"healthy"}', "--causation-id", root).strip()
    other = be.emit("other", corr="corr-2")
    be.drain()
    nodes = json.loads(be.ok("correlate", "corr-1", "-o", "json"))
    assert [(n["id"], n["parent"], n["state"]) for n in nodes] == [
        (root, None, "processed"),
        (child, root, "processed"),
    ]
    assert other not in {n["id"] for n in nodes}
    r = be.cli("correlate", child, "--expect", "system.health>system.health")
    assert r.returncode == 0, r.stderr
    r = be.cli("correlate", "corr-1", "--expect", "system.health>drift.*")
    assert r.returncode == 1
    r = be.cli("correlate", "nope-nothing")
    assert r.returncode == 1 and "no event or correlation id nope-nothing" in r.stderr


def test_status_counts_check_and_nats_partitions(be: Env) -> None:
    """status counts pending then processed on both backends, --check exits 2 on lag over --max-lag and 0 after;
    on NATS it lists every partition with pending, ack pending, redelivered, lag and owner."""
    ids = [be.emit(s) for s in ("a", "b", "c")]
    doc = json.loads(be.ok("status", "-o", "json"))
    assert doc["counts"]["pending"] == 3 and doc["counts"]["processed"] == 0
    assert doc["oldest_pending_age_seconds"] is not None
    r = be.cli("status", "--check", "--max-lag", "0s", "--warn-lag", "0s")
    assert r.returncode == 2 and r.stdout.startswith("POET CRITICAL")
    be.drain()
    doc = json.loads(be.ok("status", "-o", "json"))
    assert doc["counts"]["pending"] == 0 and doc["counts"]["processed"] == len(ids)
    assert doc["oldest_pending_age_seconds"] is None
    assert be.cli("status", "--check").returncode == 0
    if be.kind == "nats":
        parts = doc["nats"]["partitions"]
        assert [p["partition"] for p in parts] == [0, 1, 2, 3]
        assert all(p["pending"] == 0 and p["ack_pending"] == 0 and p["lag_seconds"] is None for p in parts)
        assert doc["nats"]["stream"]["messages"] == 3
        table = be.ok("status", "-o", "table")
        assert "partition" in table and "ack pending" in table and "poet-p3" in table


def test_status_shows_the_partition_owner_and_ack_pending_while_a_daemon_handles(be: Env) -> None:
    """While a daemon is inside a handler, status shows the event in flight, the daemon alive and (on NATS) the
    daemon as its partition's owner with one ack pending."""
    gate = be.root / "gate"
    slow = be.emit("slow")
    d = subprocess.Popen(
        be.argv("daemon", "--handlers", str(be.root / "h.py"), "--workers", "1"),
        cwd=be.root,
        env=be.env(POET_TEST_GATE=str(gate)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: (be.root / "gate.entered").exists() or d.poll() is not None, "the handler to start")
        assert d.poll() is None
        doc = json.loads(be.ok("status", "-o", "json"))
        assert doc["counts"]["inflight"] == 1 and doc["counts"]["pending"] == 0
        assert doc["daemons_alive"] == 1
        if be.kind == "nats":
            name = doc["daemons"][0]["owner"]
            [busy] = [p for p in doc["nats"]["partitions"] if p["ack_pending"]]
            assert busy["owner"] == name and busy["ack_pending"] == 1 and busy["lag_seconds"] is not None
            assert doc["daemons"][0]["partitions"] == [busy["partition"]]
        gate.write_text("")
        wait_until(
            lambda: slow in be.seen() and json.loads(be.ok("status", "-o", "json"))["counts"]["processed"] == 1,
            "the event to be processed",
        )
    finally:
        gate.write_text("")
        d.send_signal(signal.SIGTERM)
        d.wait(60)


def test_status_when_nats_is_unreachable(tmp_path: Path) -> None:
    """--mode nats with no server: status exits 69 with one line; --check says UNKNOWN (3)."""
    (tmp_path / "poet.toml").write_text(TOML)
    e = Env("nats", tmp_path, "nats://127.0.0.1:1")
    r = e.cli("status")
    assert r.returncode == 69 and "cannot connect to NATS at nats://127.0.0.1:1" in r.stderr
    assert "Traceback" not in r.stderr
    r = e.cli("status", "--check")
    assert r.returncode == 3 and r.stdout.startswith("POET UNKNOWN")
    for args in (["tail"], ["correlate", "x"], ["replay", "--all"]):
        r = e.cli(*args)
        assert r.returncode == 69 and "Traceback" not in r.stderr, args
