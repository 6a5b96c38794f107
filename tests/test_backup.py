"""backup/restore: consistent archive during a real daemon drain, point-in-time recovery, tamper refusal."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from daemon_helpers.harness import Daemons, write_config

from poetctl import EventRouter

N = int(os.environ.get("POET_TEST_BACKUP_EVENTS", "4000"))  # the 20,000 on a fast machine


def emit_many(spool: Path, n: int, start: int = 0) -> list[str]:
    r = EventRouter(spool=spool)
    ids: list[str] = []
    for lo in range(start, start + n, 2000):
        ids += r.emit_many(
            ("system.health", {"service": f"s{i}", "status": "healthy"}) for i in range(lo, min(lo + 2000, start + n))
        )
    return ids


def event_files(spool: Path) -> dict[str, list[str]]:
    """id -> every state directory holding it (in-flight directories count as 'inflight')."""
    out: dict[str, list[str]] = {}
    ev = spool / "events"
    for state in ("pending", "processed", "dead", "corrupt"):
        for p in (ev / state).glob("*.json"):
            out.setdefault(p.name[:-5], []).append(state)
    for owner in (ev / "inflight").glob("*"):
        for p in owner.glob("*.json"):
            out.setdefault(p.name[:-5], []).append("inflight")
    return out


def manifest_of(archive: Path) -> dict[str, Any]:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes())).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile("manifest.json")
        assert f is not None
        out: dict[str, Any] = json.loads(f.read())
        return out


@pytest.mark.slow
def test_backup_during_a_drain_restores_each_event_once(
    run_cli: Any, tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """A backup taken while a real daemon drains restores to a fsck-clean spool with every event once, as archived."""
    ids = emit_many(sp, N)
    cfg = write_config(tmp_path, workers=2)
    slow = tmp_path / "slow.py"  # 1 ms per event: the drain outlasts the backup's start-up on any machine
    slow.write_text(
        "import time\n\ndef register(router):\n    router.subscribe('*.*', lambda e: time.sleep(0.001), name='slow')\n"
    )
    d = daemons.start(sp, cfg, handlers=(slow,))
    # Wait (on the spool, not a clock) until the drain is under way but far from done.
    while len(list((sp / "events" / "processed").iterdir())) < N // 10:
        assert d.alive(), d.stderr()
    archive = tmp_path / "b.tar.zst"
    r = run_cli("--spool", sp, "backup", archive)
    assert r.returncode == 0, r.stderr
    left = len(list((sp / "events" / "pending").iterdir()))
    d.stop()
    m = manifest_of(archive)
    assert 0 < m["counts"].get("processed", 0) < N and left < N  # taken mid-drain
    assert sum(m["counts"].values()) == N
    assert m["compression"] == "zstd" and m["poetctl_version"]
    new = tmp_path / "restored"
    r = run_cli("restore", archive, "--spool", new)
    assert r.returncode == 0, r.stderr
    where = event_files(new)
    assert set(where) == set(ids)
    assert all(len(v) == 1 for v in where.values())
    archived = {name.split("/")[2][:-5]: name.split("/")[1] for name in m["files"] if name.startswith("events/")}
    assert {i: v[0] for i, v in where.items()} == archived
    r = run_cli("--spool", new, "fsck")
    assert r.returncode == 0, r.stdout + r.stderr


def test_point_in_time_restore_holds_exactly_the_events_up_to_t(run_cli: Any, tmp_path: Path, sp: Path) -> None:
    """restore --until T keeps the events stamped <= T and no other."""
    r = EventRouter(spool=sp)
    early = [r.emit("system.health", {"service": f"a{i}", "status": "healthy"}) for i in range(5)]
    stamps = {p.name[:-5]: json.loads(p.read_bytes())["timestamp"] for p in (sp / "events" / "pending").iterdir()}
    t = max(stamps.values())
    late = []
    while len(late) < 5:  # strictly later stamps (microsecond clock)
        eid = r.emit("system.health", {"service": f"b{len(late)}", "status": "healthy"})
        late.append(eid)
    assert all(json.loads((sp / "events" / "pending" / f"{i}.json").read_bytes())["timestamp"] > t for i in late)
    archive = tmp_path / "b.tar.zst"
    assert run_cli("--spool", sp, "backup", archive).returncode == 0
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    new = tmp_path / "pitr"
    res = run_cli("restore", archive, "--until", iso, "--spool", new)
    assert res.returncode == 0, res.stderr
    assert set(event_files(new)) == set(early)


def tamper(archive: Path, member: str, out: Path) -> None:
    """Rewrite ``archive`` with one byte of ``member`` changed (the manifest left as it was)."""
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes())).read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for info in src:
            f = src.extractfile(info)
            body = f.read() if f else b""
            if info.name == member:
                body = body.replace(b"healthy", b"HEALTHY", 1)
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))
    out.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))


def test_tampered_archive_is_refused_naming_the_file(run_cli: Any, tmp_path: Path, sp: Path) -> None:
    """A member changed after the backup makes restore exit 65 naming it, and write nothing."""
    eid = EventRouter(spool=sp).emit("system.health", {"service": "a", "status": "healthy"})
    archive = tmp_path / "b.tar.zst"
    assert run_cli("--spool", sp, "backup", archive).returncode == 0
    bad = tmp_path / "bad.tar.zst"
    tamper(archive, f"events/pending/{eid}.json", bad)
    new = tmp_path / "new"
    r = run_cli("restore", bad, "--spool", new)
    assert r.returncode == 65, r.stderr
    assert f"events/pending/{eid}.json" in r.stderr and "checksum" in r.stderr
    assert not new.exists()


def test_restore_refuses_a_non_empty_spool(run_cli: Any, tmp_path: Path, sp: Path) -> None:
    """restore into a spool holding events exits 2 and changes nothing there."""
    EventRouter(spool=sp).emit("system.health", {"service": "a", "status": "healthy"})
    archive = tmp_path / "b.tar.zst"
    assert run_cli("--spool", sp, "backup", archive).returncode == 0
    r = run_cli("restore", archive, "--spool", sp)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_incremental_backup_holds_only_what_changed(run_cli: Any, tmp_path: Path, sp: Path) -> None:
    """backup --since the full one archives only the new events; full + incremental restore them all."""
    first = emit_many(sp, 3)
    full = tmp_path / "full.tar.zst"
    assert run_cli("--spool", sp, "backup", full).returncode == 0
    second = emit_many(sp, 2, start=100)
    inc = tmp_path / "inc.tar.zst"
    r = run_cli("--spool", sp, "backup", inc, "--since", full)
    assert r.returncode == 0, r.stderr
    assert sorted(n.split("/")[2][:-5] for n in manifest_of(inc)["files"] if n.startswith("events/")) == sorted(second)
    new = tmp_path / "new"
    assert run_cli("restore", full, inc, "--spool", new).returncode == 0
    assert set(event_files(new)) == set(first + second)


def test_an_archive_changed_after_verification_is_refused(run_cli: Any, tmp_path: Path, sp: Path) -> None:
    """Restore reads the archive twice: a member that changed after the first (verifying) pass is refused, named."""
    from poetctl.backends.fs.archive import Archives
    from poetctl.errors import InvalidData

    ids = emit_many(sp, 3)
    archive = tmp_path / "b.tar.zst"
    assert run_cli("--spool", sp, "backup", archive).returncode == 0
    archives = Archives([archive])
    bad = tmp_path / "bad.tar.zst"
    tamper(archive, f"events/pending/{ids[1]}.json", bad)
    os.replace(bad, archive)  # between the two passes
    with pytest.raises(InvalidData, match=f"events/pending/{ids[1]}.json: changed since it was verified"):
        list(archives.members())
