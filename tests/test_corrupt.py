"""poetctl corrupt list|show|requeue: what the quarantine shows (escaped, tolerant of odd .reason files)
and how a fixed file goes back through the daemon's checks into pending/ (never overwriting, never
through a link, never outside the spool)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from poetctl import EventRouter
from poetctl.backends.fs.journal import quarantine
from poetctl.event import compute_checksum
from poetctl.spool import SpoolLayout

HOSTILE = "\x1b]0;pwned\x07\x1b[2J[bold]x[/bold]"
EX_DATAERR = 65


def ev_dir(sp: Path, state: str) -> Path:
    return sp / "events" / state


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links as their target text, never followed) -> content; lock files aside."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        files = [f for f in files if not f.endswith(".lock")]
        for n in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = "-> " + os.readlink(p) if p.is_symlink() else p.read_bytes()
    return out


def event_doc(sp: Path, status: str = "healthy", event_id: str | None = None) -> dict[str, Any]:
    """A valid system.health envelope (not written anywhere)."""
    router = EventRouter(spool=sp)
    ev, _ = router.build("system.health", {"service": "s", "status": status})
    if event_id:
        ev.id = event_id
    ev.seal()
    return ev.to_dict()


def seal(doc: dict[str, Any]) -> bytes:
    doc = {k: v for k, v in doc.items() if k != "checksum"}
    doc["checksum"] = compute_checksum(doc)
    return json.dumps(doc).encode()


def quarantined(sp: Path, data: bytes, name: str, reason: str = "bad_checksum", detail: str = "test") -> str:
    """Put ``data`` in pending/``name`` and quarantine it with the daemon's own function; its name in corrupt/."""
    (ev_dir(sp, "pending") / name).write_bytes(data)
    target = quarantine(SpoolLayout(sp), ev_dir(sp, "pending") / name, reason, detail)
    assert target is not None
    return target.name


def tampered(sp: Path) -> tuple[str, dict[str, Any]]:
    """A quarantined event whose payload was changed after sealing (bad checksum); (name in corrupt/, doc)."""
    doc = event_doc(sp)
    bad = {**doc, "payload": {**doc["payload"], "status": "degraded"}}
    return quarantined(sp, json.dumps(bad).encode(), f"{doc['id']}.json"), bad


def corrupt_cli(run_cli: Any, sp: Path, *args: str, **kw: Any) -> Any:
    return run_cli("corrupt", *args, "--spool", sp, env={"COLUMNS": "250", **kw.pop("env", {})}, **kw)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- list -------------------------------------------------------------------------------------


def test_list_shows_reason_detail_and_time(run_cli: Any, sp: Path) -> None:
    """`corrupt list` (a pipe) prints one JSON line per quarantined file with reason code, detail and time."""
    a, _ = tampered(sp)
    b = quarantined(sp, b"{not json", "junk.json", "bad_json", "unexpected character")
    r = corrupt_cli(run_cli, sp, "list")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in jsonl(r.stdout)}
    assert set(rows) == {a, b}
    assert rows[b]["reason"] == "bad_json"
    assert rows[b]["detail"] == "unexpected character"
    assert isinstance(rows[b]["at"], float)
    assert rows[b]["from"] == "events/pending"
    assert rows[a]["reason"] == "bad_checksum"


def test_list_table_escapes_hostile_names_and_details(run_cli: Any, sp: Path) -> None:
    """The table escapes control characters and shows rich markup literally: a hostile file cannot drive a terminal."""
    quarantined(sp, b"x", "evil\x1b[2J.json", "bad_json", HOSTILE)
    r = corrupt_cli(run_cli, sp, "list", "-o", "table")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b" in r.stdout
    assert "[bold]x[/bold]" in r.stdout


def test_list_is_tolerant_of_odd_reason_files(run_cli: Any, sp: Path, tmp_path: Path) -> None:
    """Unknown fields are ignored; a missing, malformed, linked or absurd .reason is reported, never fatal."""
    corrupt = ev_dir(sp, "corrupt")
    (corrupt / "newer").write_bytes(b"{}")
    (corrupt / "newer.reason").write_text(
        json.dumps({"reason": "bad_name", "detail": "d", "at": 1.0, "name": "x" * 300, "file": "newer", "v": 9})
    )
    (corrupt / "no-reason").write_bytes(b"{}")
    (corrupt / "broken").write_bytes(b"{}")
    (corrupt / "broken.reason").write_bytes(b"\xff{[")
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"reason": "leaked", "detail": "outside the spool"}))
    (corrupt / "linked").write_bytes(b"{}")
    (corrupt / "linked.reason").symlink_to(outside)
    (corrupt / "future").write_bytes(b"{}")
    (corrupt / "future.reason").write_text('{"reason": "bad_json", "at": 1e300}')
    (corrupt / "gone.json.reason").write_text('{"reason": "bad_json", "detail": "d"}')
    (corrupt / ".123.tmp").write_bytes(b"writer in progress")
    r = corrupt_cli(run_cli, sp, "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"newer", "no-reason", "broken", "linked", "future", "gone.json.reason"}
    assert rows["newer"]["original_name"] == "x" * 300
    assert (rows["newer"]["reason"], rows["newer"]["at"]) == ("bad_name", 1.0)
    assert rows["no-reason"]["reason"] is None and rows["no-reason"]["reason_file"] is None
    assert rows["broken"]["reason"] is None and "not JSON" in rows["broken"]["reason_error"]
    assert rows["linked"]["reason"] is None and "not_regular" in rows["linked"]["reason_error"]
    assert "leaked" not in r.stdout
    assert rows["gone.json.reason"]["reason"] == "orphan_reason"
    t = corrupt_cli(run_cli, sp, "list", "-o", "table")
    assert t.returncode == 0, t.stderr


def test_list_refuses_a_linked_corrupt_dir(run_cli: Any, sp: Path, tmp_path: Path) -> None:
    """events/corrupt swapped for a link to a directory outside the spool is refused (74), nothing read there."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.reason").write_text('{"reason": "outside"}')
    (outside / "x").write_text("{}")
    corrupt = ev_dir(sp, "corrupt")
    corrupt.rmdir()
    corrupt.symlink_to(outside)
    r = corrupt_cli(run_cli, sp, "list")
    assert r.returncode == 74, r.stderr
    assert "outside" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


# -- show -------------------------------------------------------------------------------------


def test_show_prints_reason_and_escaped_content(run_cli: Any, sp: Path) -> None:
    """`show NAME` prints reason, detail and the content with control characters escaped."""
    name = quarantined(sp, b'{"a": "' + HOSTILE.encode() + b'"}\n\xff', "evil.json", "bad_json", "why " + HOSTILE)
    r = corrupt_cli(run_cli, sp, "show", name, "-o", "text")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "reason:      bad_json" in r.stdout
    assert '{"a": "\\x1b]0;pwned\\x07\\x1b[2J[bold]x[/bold]"}' in r.stdout
    assert "\\xff" in r.stdout


def test_show_raw_and_json_are_exact(run_cli: Any, sp: Path) -> None:
    """--raw writes the file's exact bytes; -o json carries reason and content (undecodable bytes as \\xNN)."""
    data = b'{"a": "\x1b[2J"}\n\xff\x00'
    name = quarantined(sp, data, "raw.json", "bad_json", "d")
    import subprocess
    import sys

    from conftest import clean_env

    raw = subprocess.run(
        [sys.executable, "-m", "poetctl", "corrupt", "show", name, "--raw", "--spool", str(sp)],
        capture_output=True,
        env=clean_env(),
        check=False,
    )
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == data
    r = corrupt_cli(run_cli, sp, "show", name, "-o", "json")
    doc = json.loads(r.stdout)
    assert doc["reason"] == "bad_json"
    assert doc["content"] == '{"a": "\x1b[2J"}\n\\xff\x00'
    assert doc["truncated"] is False


def test_show_never_follows_a_link(run_cli: Any, sp: Path, tmp_path: Path) -> None:
    """A symlink in corrupt/ is described as one; neither show nor show --raw prints its target's content."""
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET")
    (ev_dir(sp, "corrupt") / "ln.json").symlink_to(outside)
    r = corrupt_cli(run_cli, sp, "show", "ln.json", "-o", "text")
    assert r.returncode == 0, r.stderr
    assert "symlink" in r.stdout
    assert "TOP SECRET" not in r.stdout
    r = corrupt_cli(run_cli, sp, "show", "ln.json", "--raw")
    assert r.returncode == EX_DATAERR
    assert "TOP SECRET" not in r.stdout


@pytest.mark.parametrize(("name", "code"), [("nope.json", 1), ("../events/pending", 2), (".hidden", 2)])
def test_show_unknown_or_path_names(run_cli: Any, sp: Path, name: str, code: int) -> None:
    """`show` of a name not in corrupt/ exits 1; a path or hidden name is refused as usage (2)."""
    r = corrupt_cli(run_cli, sp, "show", name)
    assert r.returncode == code, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_show_of_a_reason_record_is_not_a_quarantined_file(run_cli: Any, sp: Path) -> None:
    """NAME.reason beside NAME is that file's reason, not an entry: `show NAME.reason` exits 1."""
    name = quarantined(sp, b"x", "a.json", "bad_json", "d")
    r = corrupt_cli(run_cli, sp, "show", name + ".reason")
    assert r.returncode == 1, r.stderr


# -- requeue ----------------------------------------------------------------------------------


def test_requeue_fixed_file_end_to_end(run_cli: Any, sp: Path) -> None:
    """A daemon quarantines a tampered event; fixed, requeue puts it in pending/<id>.json and the daemon handles it."""
    doc = event_doc(sp)
    (ev_dir(sp, "pending") / f"{doc['id']}.json").write_text(
        json.dumps({**doc, "payload": {**doc["payload"], "status": "degraded"}})
    )
    r = run_cli("daemon", "--once", "--spool", sp, "--no-builtin-handlers")
    assert r.returncode == 1, r.stderr  # something was quarantined
    (name,) = [p.name for p in ev_dir(sp, "corrupt").iterdir() if not p.name.endswith(".reason")]
    (ev_dir(sp, "corrupt") / name).write_bytes(seal({**doc, "payload": {**doc["payload"], "status": "degraded"}}))
    r = corrupt_cli(run_cli, sp, "requeue", name)
    assert r.returncode == 0, r.stderr
    assert jsonl(r.stdout) == [{"name": name, "status": "requeued", "id": doc["id"], "reason": None, "detail": None}]
    assert list(ev_dir(sp, "corrupt").iterdir()) == []
    assert json.loads((ev_dir(sp, "pending") / f"{doc['id']}.json").read_text())["payload"]["status"] == "degraded"
    r = run_cli("daemon", "--once", "--spool", sp, "--no-builtin-handlers")
    assert r.returncode == 0, r.stderr
    assert (ev_dir(sp, "processed") / f"{doc['id']}.json").exists()


def _deep(sp: Path) -> bytes:
    """A file nested 300 levels deep with a checksum: the checksum's recursion must never see it."""
    doc = {**event_doc(sp), "checksum": "sha256:" + "0" * 64}
    doc["payload"] = {**doc["payload"], "x": "@"}
    return json.dumps(doc).replace('"@"', "[" * 300 + "]" * 300).encode()


def _too_large(sp: Path) -> bytes:
    doc = event_doc(sp)
    return seal({**doc, "payload": {**doc["payload"], "pad": "x" * 2_000_000}})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda sp: b"{not json", "bad_json"),
        (lambda sp: json.dumps({**event_doc(sp), "checksum": "sha256:" + "0" * 64}).encode(), "bad_checksum"),
        (lambda sp: seal({k: v for k, v in event_doc(sp).items() if k != "type"}), "bad_envelope"),
        (lambda sp: seal({**event_doc(sp), "payload": {"service": "s", "status": 42}}), "bad_schema"),
        (lambda sp: seal({**event_doc(sp), "type": "no.such.type"}), "unknown_type"),
        (_too_large, "too_large"),
        (_deep, "bad_json"),
    ],
)
def test_requeue_still_invalid_stays_with_the_new_reason(run_cli: Any, sp: Path, make: Any, reason: str) -> None:
    """Each daemon check applies: a still-invalid file stays in corrupt/, exit 65, new reason printed and recorded."""
    name = quarantined(sp, make(sp), "f.json", "bad_name", "old detail")
    before = json.loads((ev_dir(sp, "corrupt") / f"{name}.reason").read_text())
    r = corrupt_cli(run_cli, sp, "requeue", name)
    assert r.returncode == EX_DATAERR, r.stderr
    assert jsonl(r.stdout)[0]["status"] == "invalid"
    assert jsonl(r.stdout)[0]["reason"] == reason
    assert f"still invalid: {reason}" in r.stderr
    assert (ev_dir(sp, "corrupt") / name).exists()
    assert list(ev_dir(sp, "pending").iterdir()) == []
    after = json.loads((ev_dir(sp, "corrupt") / f"{name}.reason").read_text())
    assert after["reason"] == reason
    assert (after.get("from"), after.get("name"), after.get("at")) == (before["from"], before["name"], before["at"])


def test_requeue_never_follows_a_link_out_of_the_spool(run_cli: Any, sp: Path, tmp_path: Path) -> None:
    """A symlink in corrupt/ to a valid event outside the spool is refused (not_regular); the target is untouched."""
    outside = tmp_path / "outside.json"
    outside.write_bytes(seal(event_doc(sp)))
    before = outside.read_bytes()
    (ev_dir(sp, "corrupt") / "ln.json").symlink_to(outside)
    r = corrupt_cli(run_cli, sp, "requeue", "ln.json")
    assert r.returncode == EX_DATAERR, r.stderr
    assert jsonl(r.stdout)[0]["reason"] == "not_regular"
    assert (ev_dir(sp, "corrupt") / "ln.json").is_symlink()
    assert outside.read_bytes() == before
    assert list(ev_dir(sp, "pending").iterdir()) == []


@pytest.mark.parametrize("linked", ["events/corrupt", "events/pending"])
def test_requeue_refuses_linked_spool_directories(run_cli: Any, sp: Path, tmp_path: Path, linked: str) -> None:
    """A spool directory swapped for a link is refused (74): nothing is moved into or out of it."""
    doc = event_doc(sp)
    outside = tmp_path / "elsewhere"
    if linked == "events/corrupt":
        outside.mkdir()
        (outside / "e.json").write_bytes(seal(doc))
        (sp / linked).rmdir()
        (sp / linked).symlink_to(outside)
        name = "e.json"
    else:
        name = quarantined(sp, seal(doc), "e.json")
        outside.mkdir()
        (sp / linked).rmdir()
        (sp / linked).symlink_to(outside)
    before = snapshot(tmp_path)
    r = corrupt_cli(run_cli, sp, "requeue", name)
    assert r.returncode == 74, r.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["pending", "processed", "dead", "inflight"])
def test_requeue_never_overwrites_or_duplicates_an_id(run_cli: Any, sp: Path, where: str) -> None:
    """A valid file whose id is already in pending, in flight, processed or dead stays put (65); nothing changes."""
    doc = event_doc(sp)
    directory = ev_dir(sp, where) / ("owner-1" if where == "inflight" else "")
    directory.mkdir(exist_ok=True)
    (directory / f"{doc['id']}.json").write_bytes(b"the existing one")
    name = quarantined(sp, seal({**doc, "source": "fixed"}), "fixed.json")
    before = snapshot(sp / "events")
    r = corrupt_cli(run_cli, sp, "requeue", name)
    assert r.returncode == EX_DATAERR, r.stderr
    row = jsonl(r.stdout)[0]
    assert row["status"] == "exists"
    assert f"events/{where}" in row["detail"]
    assert snapshot(sp / "events") == before


def test_requeue_two_copies_of_one_id(run_cli: Any, sp: Path) -> None:
    """Two quarantined copies of one id: the first goes back, the second stays (exists, 65) and overwrites nothing."""
    doc = event_doc(sp)
    a = quarantined(sp, seal({**doc, "source": "a"}), "copy-a")
    b = quarantined(sp, seal({**doc, "source": "b"}), "copy-b")
    r = corrupt_cli(run_cli, sp, "requeue", a, b)
    assert r.returncode == EX_DATAERR, r.stderr
    assert [row["status"] for row in jsonl(r.stdout)] == ["requeued", "exists"]
    assert json.loads((ev_dir(sp, "pending") / f"{doc['id']}.json").read_text())["source"] == "a"
    assert (ev_dir(sp, "corrupt") / b).exists()


@pytest.mark.parametrize("with_reason", [True, False])
def test_requeue_a_long_or_bounded_name(run_cli: Any, sp: Path, with_reason: bool) -> None:
    """A file quarantined under a bounded name (original name in .reason) or a 250-byte name goes back as <id>.json."""
    doc = event_doc(sp)
    corrupt = ev_dir(sp, "corrupt")
    if with_reason:
        name = "n" * 180 + "~0123456789abcdef"
        (corrupt / f"{name}.reason").write_text(json.dumps({"reason": "bad_name", "name": "n" * 250, "file": name}))
    else:
        name = "n" * 245 + ".json"  # left without a .reason by the daemon that died writing it
    (corrupt / name).write_bytes(seal(doc))
    r = corrupt_cli(run_cli, sp, "requeue", name)
    assert r.returncode == 0, r.stderr
    assert (ev_dir(sp, "pending") / f"{doc['id']}.json").exists()
    assert list(corrupt.iterdir()) == []


def test_requeue_dry_run_changes_nothing(run_cli: Any, sp: Path) -> None:
    """--dry-run reports would_requeue / invalid with the right exit code and leaves every file as it was."""
    doc = event_doc(sp)
    good = quarantined(sp, seal(doc), "good.json")
    r = corrupt_cli(run_cli, sp, "requeue", "--dry-run", good)
    assert r.returncode == 0, r.stderr
    assert jsonl(r.stdout)[0] == {"name": good, "status": "would_requeue", "id": doc["id"], "reason": None,
                                  "detail": None}  # fmt: skip
    quarantined(sp, b"{bad", "bad.json", "bad_json", "d")
    before = snapshot(sp)
    r = corrupt_cli(run_cli, sp, "requeue", "--dry-run", "--all")
    assert r.returncode == EX_DATAERR, r.stderr
    assert sorted(row["status"] for row in jsonl(r.stdout)) == ["invalid", "would_requeue"]
    assert snapshot(sp) == before


def test_requeue_all_moves_the_valid_and_keeps_the_rest(run_cli: Any, sp: Path) -> None:
    """--all requeues every valid file, keeps invalid ones (65), and leaves an orphan reason record alone."""
    docs = [event_doc(sp) for _ in range(3)]
    for i, d in enumerate(docs):
        quarantined(sp, seal(d), f"ok-{i}")
    quarantined(sp, b"[1, 2", "bad.json", "bad_json", "d")
    (ev_dir(sp, "corrupt") / "gone.reason").write_text('{"reason": "bad_json"}')
    r = corrupt_cli(run_cli, sp, "requeue", "--all")
    assert r.returncode == EX_DATAERR, r.stderr
    statuses = {row["name"]: row["status"] for row in jsonl(r.stdout)}
    assert statuses == {"ok-0": "requeued", "ok-1": "requeued", "ok-2": "requeued", "bad.json": "invalid"}
    assert sorted(p.name for p in ev_dir(sp, "pending").iterdir()) == sorted(f"{d['id']}.json" for d in docs)
    assert sorted(p.name for p in ev_dir(sp, "corrupt").iterdir()) == ["bad.json", "bad.json.reason", "gone.reason"]


@pytest.mark.parametrize(
    ("args", "code"),
    [([], 2), (["--all", "x"], 2), (["nope.json"], 1), (["a/b"], 2), ([".."], 2)],
)
def test_requeue_usage_and_missing_names(run_cli: Any, sp: Path, args: list[str], code: int) -> None:
    """requeue needs NAME... or --all (2), refuses paths (2), and exits 1 for a name not in corrupt/."""
    r = corrupt_cli(run_cli, sp, "requeue", *args)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr


def test_requeue_without_a_spool_exits_66(run_cli: Any, tmp_path: Path) -> None:
    """requeue on a spool that does not exist exits 66 and creates nothing."""
    r = run_cli("corrupt", "requeue", "--all", "--spool", tmp_path / "nope")
    assert r.returncode == 66, r.stderr
    assert not (tmp_path / "nope").exists()
