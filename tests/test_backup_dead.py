"""backup/restore keep each dead letter's original error, spool and NATS, in every direction; older archives too."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from poetctl import EventRouter
from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer
from tests.test_nats_backup import members, target, target_server

__all__ = ["project", "server", "target", "target_server"]  # the fixtures, imported for pytest

HANDLERS = """
import poetctl
def register(router):
    def check(event):
        if event.payload["status"] == "unhealthy":
            raise poetctl.Permanent("HTTP 404 for " + event.payload["service"])
    router.subscribe("system.health", check, name="check")
"""
KEPT = ("error", "reason", "attempts", "handler", "dead_at")


def items(n: int) -> list[tuple[str, dict[str, str]]]:
    """``n`` events, every other one dead-lettered by the handler (each with its own error)."""
    return [("system.health", {"service": f"s{i}", "status": "unhealthy" if i % 2 else "healthy"}) for i in range(n)]


def dead_rows(project: Path, url: str, *where: str) -> dict[str, dict[str, Any]]:
    """id -> the `dead list` row (error, reason, attempts, handler, dead_at) of the spool or server at ``where``."""
    r = cli(["dead", "list", "-o", "json", *where], project, url)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = doc if isinstance(doc, list) else doc.get("dead", doc.get("items", []))
    return {row["id"]: {k: row.get(k) for k in KEPT} for row in rows}


def source(kind: str, project: Path, url: str, tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A backup of a ``kind`` backend holding dead letters, and their `dead list` rows before the backup."""
    (project / "h.py").write_text(HANDLERS)
    archive = tmp_path / f"{kind}.tar.zst"
    run = ["daemon", "--once", "--handlers", str(project / "h.py"), "--no-builtin-handlers"]
    if kind == "spool":
        spool = tmp_path / "src"
        EventRouter(spool=spool).emit_many(items(6))
        r = cli([*run, "--spool", str(spool)], project, url)
        assert r.returncode == 1 and "dead=3" in r.stderr, r.stderr  # --once: 1 when it dead-lettered
        rows = dead_rows(project, url, "--spool", str(spool))
        assert cli(["backup", "--spool", str(spool), str(archive)], project, url).returncode == 0
    else:
        assert cli(["nats", "setup"], project, url).returncode == 0
        import os

        from poetctl.cli.mode import nats_transport
        from poetctl.config import load_config

        os.environ["POET_NATS_URL"] = url
        try:
            cfg = load_config(project / "poet.toml")
            t = nats_transport(cfg)
        finally:
            del os.environ["POET_NATS_URL"]
        try:
            EventRouter(transport=t, config=cfg).emit_many(items(6))
        finally:
            t.close()
        r = cli([*run, "--mode", "nats"], project, url)
        assert r.returncode == 1 and "dead=3" in r.stderr, r.stderr
        rows = dead_rows(project, url, "--mode", "nats")
        assert cli(["backup", "--mode", "nats", str(archive)], project, url).returncode == 0
    assert len(rows) == 3 and all("HTTP 404 for s" in str(r["error"]) for r in rows.values()), rows
    return archive, rows


def restored_rows(kind: str, archive: Path, project: Path, target: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Restore ``archive`` into a fresh ``kind`` backend; its `dead list` rows (a spool must also fsck clean)."""
    if kind == "spool":
        new = tmp_path / "new"
        r = cli(["restore", str(archive), "--spool", str(new)], project, target)
        assert r.returncode == 0, r.stderr
        f = cli(["fsck", "--spool", str(new)], project, target)
        assert f.returncode == 0, f.stdout + f.stderr
        return dead_rows(project, target, "--spool", str(new))
    r = cli(["restore", "--mode", "nats", str(archive)], project, target)
    assert r.returncode == 0, r.stderr
    return dead_rows(project, target, "--mode", "nats")


@pytest.mark.parametrize("src,dst", [("spool", "spool"), ("spool", "nats"), ("nats", "spool"), ("nats", "nats")])
def test_dead_letters_keep_their_error_through_backup_and_restore(
    src: str, dst: str, project: Path, server: NatsServer, target: str, tmp_path: Path
) -> None:
    """A dead letter restored from a backup shows its original error, reason, attempts and handler in `dead list`."""
    archive, before = source(src, project, server.url, tmp_path)
    names = set(members(archive))
    assert {f"events/dead/{i}.error" for i in before} <= names  # the archive keeps each record
    after = restored_rows(dst, archive, project, target, tmp_path)
    assert after == before


def without_records(archive: Path, out: Path) -> None:
    """``archive`` as an older poetctl wrote it: no ``events/dead/<id>.error`` members, in the files table neither."""
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes())).read()
    kept: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            f = tar.extractfile(info)
            if not info.name.endswith(".error"):
                kept[info.name] = f.read() if f else b""
    manifest = json.loads(kept.pop("manifest.json"))
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith(".error")}
    kept["manifest.json"] = orjson.dumps(manifest)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in kept.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))


@pytest.mark.parametrize("dst", ["spool", "nats"])
def test_an_archive_without_records_restores_dead_letters_as_restored(
    dst: str, project: Path, server: NatsServer, target: str, tmp_path: Path
) -> None:
    """An older archive (no .error members) still restores its dead letters, saying they came from a backup."""
    archive, before = source("spool", project, server.url, tmp_path)
    old = tmp_path / "old.tar.zst"
    without_records(archive, old)
    after = restored_rows(dst, old, project, target, tmp_path)
    assert set(after) == set(before)
    assert all("restored from a backup" in str(r["reason"]) for r in after.values()), after


@pytest.mark.parametrize("dst", ["spool", "nats"])
def test_point_in_time_restore_leaves_out_the_records_of_dead_letters_after_t(
    dst: str, project: Path, server: NatsServer, target: str, tmp_path: Path
) -> None:
    """restore --until T before every dead letter restores none of them, and no orphan record (spool fsck clean)."""
    archive, before = source("spool", project, server.url, tmp_path)
    stamps = {
        n.rsplit("/", 1)[1][:-5]: json.loads(body)["timestamp"]
        for n, body in members(archive).items()
        if n.startswith("events/") and n.endswith(".json")
    }
    t = min(stamps[i] for i in before) - 1e-6  # before the first dead letter, after some processed events
    assert any(ts <= t for ts in stamps.values())
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if dst == "spool":
        new = tmp_path / "new"
        r = cli(["restore", str(archive), "--spool", str(new), "--until", iso], project, target)
        assert r.returncode == 0, r.stderr
        assert not list((new / "events" / "dead").iterdir())
        f = cli(["fsck", "--spool", str(new)], project, target)
        assert f.returncode == 0, f.stdout + f.stderr
    else:
        r = cli(["restore", "--mode", "nats", str(archive), "--until", iso], project, target)
        assert r.returncode == 0, r.stderr
        assert dead_rows(project, target, "--mode", "nats") == {}
    assert "dead=" not in r.stdout
