"""Quarantine names: bounded (NAME_MAX-long names no longer crash the daemon), collision-free for a
file and its ``.reason`` together (nothing in corrupt/ is ever overwritten), original name kept."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from daemon_helpers.harness import daemon_args, emit_metrics, events_dir, ids_in, run_cli, write_config

from poetctl.backends.fs.journal import MAX_QUARANTINE_NAME, bounded_name, quarantine
from poetctl.spool import SpoolLayout


def corrupt_files(sp: Path) -> dict[str, dict[str, object]]:
    """Every quarantined file (as named by a .reason's "file") -> that reason, checked to exist beside it."""
    corrupt = sp / "events" / "corrupt"
    out = {}
    for p in corrupt.iterdir():
        if not p.name.endswith(".reason"):
            continue
        try:
            info = json.loads(p.read_bytes())
        except ValueError:
            continue  # a quarantined file that happens to end in .reason
        if not isinstance(info, dict) or "file" not in info:
            continue
        assert info["file"] + ".reason" == p.name
        out[info["file"]] = info
    return out


def contents(sp: Path) -> set[bytes]:
    return {p.read_bytes() for p in (sp / "events" / "corrupt").iterdir() if p.is_file()}


# -- long names ----------------------------------------------------------------------------------
def long_names() -> list[str]:
    """Names of 245-255 bytes: ASCII with and without .json, multibyte UTF-8, and two sharing a 240-byte head."""
    return [
        "a" * 240 + ".json",  # 245 bytes
        "b" * 250,  # 250 bytes, no .json
        "é" * 122 + ".json",  # 249 bytes of 2-byte characters
        "c" * 250 + ".json",  # 255 bytes: NAME_MAX
        "d" * 240 + "1.json",  # these two differ only after byte 240
        "d" * 240 + "2.json",
    ]


def test_daemon_quarantines_many_long_names_in_one_run_with_reasons(tmp_path: Path, sp: Path) -> None:
    """One daemon --once run quarantines every 245-255-byte name with a reason and still handles the good events."""
    pending = events_dir(sp, "pending")
    good = emit_metrics(sp, 5)
    names = long_names()
    for i, n in enumerate(names):
        (pending / n).write_text(f"bad {i}")
    r = run_cli(tmp_path, *daemon_args(sp, write_config(tmp_path), handlers=(), once=True))
    assert "Traceback" not in r.stderr and r.returncode == 1, (r.returncode, r.stderr)
    assert ids_in(sp, "processed") == set(good)
    assert sorted(os.listdir(pending)) == []
    files = corrupt_files(sp)
    assert sorted(info["name"] for info in files.values()) == sorted(names), "the reason keeps the original name"
    for f, info in files.items():
        assert len(os.fsencode(f + ".reason")) <= 255 and len(os.fsencode(f)) <= MAX_QUARANTINE_NAME + 8
        assert (sp / "events" / "corrupt" / f).read_text() == f"bad {names.index(str(info['name']))}"
        assert info["from"] == "events/pending" and info["reason"]


def test_undecodable_name_is_quarantined_with_its_bytes_kept(tmp_path: Path, sp: Path) -> None:
    """A non-UTF-8 file name is quarantined (reason readable as JSON, raw bytes in name_hex), not a crash."""
    raw = b"\xff\xfe-bad-" + b"x" * 10
    pending = os.fsencode(events_dir(sp, "pending"))
    with open(os.path.join(pending, raw), "wb") as fh:
        fh.write(b"junk")
    good = emit_metrics(sp, 2)
    r = run_cli(tmp_path, *daemon_args(sp, write_config(tmp_path), handlers=(), once=True))
    assert "Traceback" not in r.stderr and r.returncode == 1, r.stderr
    assert ids_in(sp, "processed") == set(good)
    (info,) = corrupt_files(sp).values()
    assert bytes.fromhex(str(info["name_hex"])) == raw


def test_bounded_name_is_short_unique_and_valid_utf8() -> None:
    """Names up to the bound are kept; longer ones are cut at a character boundary plus a hash, all distinct."""
    assert bounded_name("x" * MAX_QUARANTINE_NAME) == "x" * MAX_QUARANTINE_NAME
    out = [bounded_name(n) for n in long_names()]
    assert len(set(out)) == len(out)
    for b in out:
        raw = b.encode("utf-8")  # valid UTF-8: no character was split
        assert len(raw) <= MAX_QUARANTINE_NAME


# -- collisions: quarantine never overwrites ----------------------------------------------------------
SEQUENCES = [
    ["c.reason", "c"],
    ["c", "c.reason"],
    ["c", "c"],
    ["c", "c", "c"],
    ["c.error", "c", "c.error.reason"],
    ["c.1", "c", "c", "c.1.reason"],
    ["c.reason.reason", "c.reason", "c"],
    ["a" * 250, "a" * 250],
]


@pytest.mark.parametrize("names", SEQUENCES, ids=lambda s: "+".join(n[:12] for n in s))
def test_quarantine_never_overwrites_a_file_or_its_reason(sp: Path, names: list[str]) -> None:
    """Quarantining names one after another (same name, X and X.reason, X.1...) keeps every file's content."""
    layout = SpoolLayout(sp)
    pending = layout.pending
    for i, n in enumerate(names):
        (pending / n).write_text(f"content {i} of {n}")
        target = quarantine(layout, pending / n, "bad_name", f"case {i}")
        assert target is not None and target.read_text() == f"content {i} of {n}"
    files = corrupt_files(sp)
    assert len(files) == len(names), sorted(os.listdir(layout.corrupt))
    for f, info in files.items():
        i = int(str(info["detail"]).split()[1])
        assert info["name"] == names[i]
        assert (layout.corrupt / f).read_text() == f"content {i} of {names[i]}"


@pytest.mark.parametrize("order", list(itertools.permutations(["c", "c.reason", "c.1"])))
def test_every_order_of_colliding_names_keeps_every_content(sp: Path, order: tuple[str, ...]) -> None:
    """Whatever the order, corrupt/ holds every quarantined content and each .reason names its own file."""
    layout = SpoolLayout(sp)
    for n in order:
        (layout.pending / n).write_text(f"content of {n}")
        assert quarantine(layout, layout.pending / n, "bad_name", n) is not None
    assert {f"content of {n}".encode() for n in order} <= contents(sp)
    assert sorted(info["name"] for info in corrupt_files(sp).values()) == sorted(order)


def test_vanished_file_leaves_no_reason_behind(sp: Path) -> None:
    """A file that moves away before quarantine returns None and leaves no orphan .reason in corrupt/."""
    layout = SpoolLayout(sp)
    assert quarantine(layout, layout.pending / "gone.json", "bad_json", "x") is None
    assert os.listdir(layout.corrupt) == []


def test_fsck_repair_quarantines_colliding_names_without_loss(tmp_path: Path, sp: Path) -> None:
    """fsck --repair of pending/c.reason, then (later) pending/c: both survive, each with its own reason."""
    pending = events_dir(sp, "pending")
    (pending / "c.reason").write_text("first")
    r = run_cli(tmp_path, "fsck", "--repair", "--spool", sp)
    assert r.returncode == 0, r.stdout + r.stderr
    (pending / "c").write_text("second")
    r = run_cli(tmp_path, "fsck", "--repair", "--spool", sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {b"first", b"second"} <= contents(sp)
    assert sorted(info["name"] for info in corrupt_files(sp).values()) == ["c", "c.reason"]
