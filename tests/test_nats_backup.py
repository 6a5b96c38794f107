"""backup/restore in nats mode, on real nats-servers: the spool's archive format, both ways, PITR, tamper refusal."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer

__all__ = ["project", "server"]  # the fixtures, imported for pytest

N = int(os.environ.get("POET_TEST_NATS_BACKUP_EVENTS", "2000"))
HANDLERS = """
import os, time
count = [0]
def register(router):
    def seen(event):
        with open(os.environ["POET_TEST_LOG"], "a") as fh:
            fh.write(event.id + "\\n")
        time.sleep(float(os.environ.get("POET_TEST_SLEEP", "0")))
        count[0] += 1
        hold = int(os.environ.get("POET_TEST_HOLD_AT", "0"))
        if count[0] == hold:  # the drain cannot end before the test says so (POET_TEST_GATE appears)
            while not os.path.exists(os.environ["POET_TEST_GATE"]):
                time.sleep(0.01)
    router.subscribe("system.health", seen, name="seen")
"""


@pytest.fixture(scope="module")
def target_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A second JetStream server: where archives are restored (wiped for each test)."""
    with NatsServer(tmp_path_factory.mktemp("nats-target")) as s:
        yield s


@pytest.fixture
def target(target_server: NatsServer) -> str:
    """The target server's URL, wiped: a fresh server as far as poetctl can tell."""
    from poetctl.backends.nats.settings import NatsSettings
    from tests.contract.kits import wipe_nats

    wipe_nats(NatsSettings(servers=(target_server.url,)))
    return target_server.url


@pytest.fixture
def ready(project: Path, server: NatsServer) -> Path:
    """The project, set up on the source server."""
    r = cli(["nats", "setup"], project, server.url)
    assert r.returncode == 0, r.stderr
    (project / "h.py").write_text(HANDLERS)
    return project


def emit_many(url: str, project: Path, n: int, start: int = 0) -> list[str]:
    from poetctl.cli.mode import nats_transport
    from poetctl.config import load_config
    from poetctl.router import EventRouter

    os.environ["POET_NATS_URL"] = url
    try:
        cfg = load_config(project / "poet.toml")
        t = nats_transport(cfg)
    finally:
        del os.environ["POET_NATS_URL"]
    try:
        r = EventRouter(transport=t, config=cfg)
        ids: list[str] = []
        for lo in range(start, start + n, 500):
            batch = [
                ("system.health", {"service": f"s{i}", "status": "healthy"})
                for i in range(lo, min(lo + 500, start + n))
            ]
            ids += r.emit_many(batch)
        return ids
    finally:
        t.close()


def members(archive: Path) -> dict[str, bytes]:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes())).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            f = tar.extractfile(info)
            out[info.name] = f.read() if f else b""
    return out


def events_of(archive: Path) -> dict[str, str]:
    """id -> state, from an archive's event members (each id must appear once)."""
    out: dict[str, str] = {}
    for name in members(archive):
        parts = name.split("/")
        if parts[0] == "events" and parts[1] != "corrupt" and name.endswith(".json"):
            eid = parts[2][:-5]
            assert eid not in out, f"{eid} archived twice"
            out[eid] = parts[1]
    return out


def backup(project: Path, url: str, dest: Path, *extra: str) -> None:
    r = cli(["backup", "--mode", "nats", str(dest), *extra], project, url)
    assert r.returncode == 0, r.stderr


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_backup_during_a_nats_drain_restores_each_event_once(
    ready: Path, server: NatsServer, target: str, tmp_path: Path
) -> None:
    """A backup taken while a nats daemon drains restores to a fresh server with every event once, as archived."""
    ids = emit_many(server.url, ready, N)
    log = tmp_path / "handled.log"
    gate = tmp_path / "gate"
    env = {**os.environ, "POET_NATS_URL": server.url, "POET_TEST_LOG": str(log), "POET_TEST_SLEEP": "0.002"}
    env.update(POET_TEST_HOLD_AT=str(N * 9 // 10), POET_TEST_GATE=str(gate))
    cmd = [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--handlers", str(ready / "h.py")]
    cmd += ["--no-builtin-handlers", "--workers", "1"]
    d = subprocess.Popen(cmd, cwd=ready, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while len(log_lines(log)) < N // 10:  # under way, far from done (observed, not timed)
            assert d.poll() is None, d.stderr.read() if d.stderr else ""
            time.sleep(0.05)
        archive = tmp_path / "b.tar.zst"
        backup(ready, server.url, archive)
    finally:
        gate.touch()
        d.send_signal(signal.SIGTERM)
        d.wait(120)
    m = json.loads(members(archive)["manifest.json"])
    archived = events_of(archive)
    assert set(archived) == set(ids)
    assert 0 < m["counts"].get("processed", 0) < N and m["counts"].get("pending", 0) > 0  # taken mid-drain
    assert sum(m["counts"].values()) == N and m["backend"] == "nats"
    r = cli(["restore", "--mode", "nats", str(archive)], ready, target)
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.tar.zst"
    backup(ready, target, again)
    assert events_of(again) == archived  # every event once, in the state it had in the backup
    ev_members = {k: v for k, v in members(archive).items() if k.startswith("events/")}
    assert {k: v for k, v in members(again).items() if k.startswith("events/")} == ev_members
    # A daemon on the restored server handles exactly the pending events: finished ones never again.
    log2 = tmp_path / "restored.log"
    r = cli(
        ["daemon", "--mode", "nats", "--once", "--handlers", str(ready / "h.py"), "--no-builtin-handlers"],
        ready,
        target,
        POET_TEST_LOG=str(log2),
    )
    assert r.returncode == 0, r.stderr
    handled = log_lines(log2)
    assert sorted(handled) == sorted(i for i, s in archived.items() if s == "pending")


def test_point_in_time_restore_on_nats(ready: Path, server: NatsServer, target: str, tmp_path: Path) -> None:
    """restore --mode nats --until T holds the events stamped <= T and no other."""
    early = emit_many(server.url, ready, 5)
    archive0 = tmp_path / "0.tar.zst"
    backup(ready, server.url, archive0)
    stamps = [json.loads(v)["timestamp"] for k, v in members(archive0).items() if k.startswith("events/")]
    t = max(stamps)
    late = emit_many(server.url, ready, 5, start=100)
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    late_stamps = [json.loads(members(archive)[f"events/pending/{i}.json"])["timestamp"] for i in late]
    assert min(late_stamps) > t
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    r = cli(["restore", "--mode", "nats", str(archive), "--until", iso], ready, target)
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check.tar.zst"
    backup(ready, target, check)
    assert set(events_of(check)) == set(early)
    from tests.test_nats_keysubject import assert_key_subjects

    assert assert_key_subjects(target) == len(early)  # restore publishes on key subjects


def tamper(archive: Path, member: str, out: Path) -> None:
    """``archive`` with one byte of ``member`` changed (the manifest as it was)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as dst:
        for name, body in members(archive).items():
            if name == member:
                body = body.replace(b"healthy", b"HEALTHY", 1)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))
    out.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))


def test_tampered_archive_is_refused_on_nats(ready: Path, server: NatsServer, target: str, tmp_path: Path) -> None:
    """A member changed after the backup: restore --mode nats exits 65 naming it, and the target stays empty."""
    (eid,) = emit_many(server.url, ready, 1)
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    bad = tmp_path / "bad.tar.zst"
    tamper(archive, f"events/pending/{eid}.json", bad)
    r = cli(["restore", "--mode", "nats", str(bad)], ready, target)
    assert r.returncode == 65, r.stderr
    assert f"events/pending/{eid}.json" in r.stderr and "checksum" in r.stderr
    r = cli(["restore", "--mode", "nats", str(archive)], ready, target)  # nothing was written: the good one fits
    assert r.returncode == 0, r.stderr


def test_restore_refuses_a_non_empty_stream(ready: Path, server: NatsServer, tmp_path: Path) -> None:
    """restore --mode nats into a stream holding events exits 2 and adds nothing."""
    emit_many(server.url, ready, 2)
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    r = cli(["restore", "--mode", "nats", str(archive)], ready, server.url)
    assert r.returncode == 2 and "not empty" in r.stderr, r.stderr
    again = tmp_path / "again.tar.zst"
    backup(ready, server.url, again)
    assert len(events_of(again)) == 2


def test_incremental_backup_on_nats(ready: Path, server: NatsServer, target: str, tmp_path: Path) -> None:
    """backup --mode nats --since the full one holds only the new events; full + incremental restore all."""
    first = emit_many(server.url, ready, 3)
    full = tmp_path / "full.tar.zst"
    backup(ready, server.url, full)
    second = emit_many(server.url, ready, 2, start=100)
    inc = tmp_path / "inc.tar.zst"
    backup(ready, server.url, inc, "--since", str(full))
    assert sorted(events_of(inc)) == sorted(second)
    r = cli(["restore", "--mode", "nats", str(full), str(inc)], ready, target)
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check.tar.zst"
    backup(ready, target, check)
    assert set(events_of(check)) == set(first + second)


def test_one_archive_format_for_both_backends(ready: Path, server: NatsServer, target: str, tmp_path: Path) -> None:
    """A spool backup restores into NATS, and a NATS backup into a new spool (fsck clean), each event in its state."""
    ids = emit_many(server.url, ready, 4)
    r = cli(["daemon", "--mode", "nats", "--once", "--no-builtin-handlers"], ready, server.url)
    assert r.returncode == 0, r.stderr
    more = emit_many(server.url, ready, 2, start=50)
    put_function_state(server.url, "f.demo.cur", b'{"version": "1"}')
    nats_archive = tmp_path / "n.tar.zst"
    backup(ready, server.url, nats_archive)
    want = {**dict.fromkeys(ids, "processed"), **dict.fromkeys(more, "pending")}
    assert events_of(nats_archive) == want
    assert members(nats_archive)["kv/functions/f.demo.cur"] == b'{"version": "1"}'
    spool = tmp_path / "spool"
    r = cli(["restore", str(nats_archive), "--spool", str(spool)], ready, server.url)
    assert r.returncode == 0, r.stderr
    assert "skipped_nats_state=1" in r.stdout  # the KV function state has no spool file: said, not written
    r = cli(["--spool", str(spool), "fsck"], ready, server.url)
    assert r.returncode == 0, r.stdout + r.stderr
    spool_archive = tmp_path / "s.tar.zst"
    r = cli(["--spool", str(spool), "backup", str(spool_archive)], ready, server.url)
    assert r.returncode == 0, r.stderr
    assert events_of(spool_archive) == want
    r = cli(["restore", "--mode", "nats", str(spool_archive)], ready, target)
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check.tar.zst"
    backup(ready, target, check)
    assert events_of(check) == want


def test_nats_function_state_round_trips(ready: Path, server: NatsServer, target: str, tmp_path: Path) -> None:
    """The function-state KV bucket is archived and restored into a fresh server, byte for byte."""
    emit_many(server.url, ready, 1)
    put_function_state(server.url, "f.demo.cur", b'{"version": "2"}')
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    r = cli(["restore", "--mode", "nats", str(archive)], ready, target)
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check.tar.zst"
    backup(ready, target, check)
    assert members(check)["kv/functions/f.demo.cur"] == b'{"version": "2"}'


def put_function_state(url: str, key: str, value: bytes) -> None:
    from poetctl.backends.nats.link import Link
    from poetctl.backends.nats.settings import NatsSettings

    link = Link(NatsSettings(servers=(url,)))
    try:

        async def go() -> None:
            await (await link.js.key_value("POET_FUNCTIONS")).put(key, value)

        link.run(go())
    finally:
        link.close()


def test_restore_target_follows_spool_then_mode(ready: Path, server: NatsServer, tmp_path: Path) -> None:
    """--spool NEW is always a spool (even with delivery_mode = nats); --spool with --mode nats is a usage error (2)."""
    emit_many(server.url, ready, 1)
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    toml = ready / "poet.toml"
    toml.write_text('delivery_mode = "nats"\n' + toml.read_text())
    r = cli(["restore", str(archive), "--mode", "nats", "--spool", str(tmp_path / "x")], ready, server.url)
    assert r.returncode == 2 and "exclude each other" in r.stderr, r.stderr
    r = cli(["restore", str(archive), "--spool", str(tmp_path / "new")], ready, server.url)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "new" / "events" / "pending").glob("*.json"))) == 1


def test_events_without_a_state_entry_take_their_state_from_the_ack_floor(
    ready: Path, server: NatsServer, tmp_path: Path
) -> None:
    """An event with no KV entry is archived processed at or below its partition's ack floor, else pending."""
    done = emit_many(server.url, ready, 6)
    r = cli(["daemon", "--mode", "nats", "--once", "--no-builtin-handlers"], ready, server.url)
    assert r.returncode == 0, r.stderr
    waiting = emit_many(server.url, ready, 3, start=50)
    purge_states(server.url, done + waiting)  # as the KV-less publishing path leaves them
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    assert events_of(archive) == {**dict.fromkeys(done, "processed"), **dict.fromkeys(waiting, "pending")}


def purge_states(url: str, ids: list[str]) -> None:
    from poetctl.backends.nats.link import Link
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.subjects import kv_key

    link = Link(NatsSettings(servers=(url,)))
    try:

        async def go() -> None:
            kv = await link.js.key_value("POET_STATE")
            for i in ids:
                await kv.purge(kv_key(i))

        link.run(go())
    finally:
        link.close()


def test_restored_pending_events_keep_each_keys_order(
    ready: Path, server: NatsServer, target: str, tmp_path: Path
) -> None:
    """After a restore into NATS, a daemon hands each key's pending events out in their emit order."""
    from poetctl.cli.mode import nats_transport
    from poetctl.config import load_config
    from poetctl.router import EventRouter

    os.environ["POET_NATS_URL"] = server.url
    try:
        cfg = load_config(ready / "poet.toml")
        t = nats_transport(cfg)
    finally:
        del os.environ["POET_NATS_URL"]
    order: dict[str, list[str]] = {"k1": [], "k2": [], "k3": []}
    try:
        r = EventRouter(transport=t, config=cfg)
        for i in range(30):
            key = f"k{i % 3 + 1}"
            order[key].append(r.emit("system.health", {"service": f"s{i}", "status": "healthy"}, correlation_id=key))
    finally:
        t.close()
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    r2 = cli(["restore", "--mode", "nats", str(archive)], ready, target)
    assert r2.returncode == 0, r2.stderr
    log = tmp_path / "handled.log"
    d = cli(
        ["daemon", "--mode", "nats", "--once", "--handlers", str(ready / "h.py"), "--no-builtin-handlers"],
        ready,
        target,
        POET_TEST_LOG=str(log),
    )
    assert d.returncode == 0, d.stderr
    handled = log_lines(log)
    for ids in order.values():
        assert [i for i in handled if i in set(ids)] == ids


def test_spool_quarantine_and_state_files_into_nats(
    ready: Path, server: NatsServer, target: str, tmp_path: Path
) -> None:
    """A spool archive's quarantined input comes back quarantined on NATS; its state/ files are named as left out."""
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.router import EventRouter
    from poetctl.transport import State

    spool = tmp_path / "spool"
    eid = EventRouter(spool=spool).emit("system.health", {"service": "a", "status": "healthy"})
    (spool / "events" / "corrupt" / "bad-input.json").write_bytes(b"{not json")
    (spool / "events" / "corrupt" / "bad-input.json.reason").write_text("invalid_json: line 1\n")
    (spool / "state").mkdir(exist_ok=True)
    (spool / "state" / "note.json").write_text("{}")
    archive = tmp_path / "s.tar.zst"
    r = cli(["--spool", str(spool), "backup", str(archive)], ready, server.url)
    assert r.returncode == 0, r.stderr
    r = cli(["restore", "--mode", "nats", str(archive)], ready, target)
    assert r.returncode == 0, r.stderr
    assert "corrupt=1" in r.stdout and "pending=1" in r.stdout and "skipped_state_files=1" in r.stdout
    assert "was not restored; the events were" in r.stderr
    t = NatsTransport(NatsSettings(servers=(target,)))
    try:
        bad = t.get("bad-input")
        assert bad is not None and bad.state is State.CORRUPT and "invalid_json: line 1" in str(bad.info)
        assert t.state_of(eid) is State.PENDING
    finally:
        t.close()


def test_restored_events_carry_their_key_header(ready: Path, server: NatsServer, target: str, tmp_path: Path) -> None:
    """Restore publishes each event with the Poet-Key header of its partition key, as a publish does.

    Without it a restored pending event would hold back every key's later high events in its partition.
    """
    import asyncio

    import nats

    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.subjects import key_hash
    from poetctl.event import Event
    from poetctl.partition import key_function

    key_of = key_function()
    emit_many(server.url, ready, 20)
    archive = tmp_path / "b.tar.zst"
    backup(ready, server.url, archive)
    r = cli(["restore", "--mode", "nats", str(archive)], ready, target)
    assert r.returncode == 0, r.stderr
    stream = NatsSettings(servers=(target,)).stream

    async def read() -> list[tuple[dict[str, str], bytes]]:
        nc = await nats.connect(target)
        try:
            js = nc.jetstream()
            st = (await js.stream_info(stream)).state
            msgs = [await js.get_msg(stream, q) for q in range(st.first_seq, st.last_seq + 1)]
            return [(m.headers or {}, m.data or b"") for m in msgs]
        finally:
            await nc.close()

    got = asyncio.run(read())
    assert len(got) == 20
    for headers, data in got:
        ev = Event.from_dict(json.loads(data))
        assert headers.get("Poet-Key") == key_hash(key_of(ev)), headers
