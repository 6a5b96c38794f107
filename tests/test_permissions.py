"""Permission and disk errors: every command prints one line naming the path and exits 77 (permission
denied) or 74 (other I/O errors), never a traceback and never 1; `status --check` says UNKNOWN (3)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import load_samples
from privileges import can_drop, run_bound

from poetctl import EventRouter
from poetctl.event import Event
from poetctl.ids import uuid7

pytestmark = pytest.mark.skipif(not can_drop(), reason="cannot make file modes bind for a child process here")
SAMPLES = load_samples()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Path]:
    """A spool with a pending, a processed and a dead event and some state; modes restored at the end."""
    root = tmp_path / "spool"
    router = EventRouter(spool=root)
    router.emit("system.health", SAMPLES["system.health"]["valid"][0], correlation_id="c-1")
    for state in ("processed", "dead"):
        ev, _ = router.build("system.metrics", SAMPLES["system.metrics"]["valid"][0], correlation_id="c-1")
        ev.id, ev.checksum = uuid7(), None
        (root / "events" / state / f"{ev.id}.json").write_bytes(ev.seal().to_json())
    error = {"reason": "attempts_exhausted", "attempts": 1, "error": "x", "dead_at": time.time()}
    (root / "events" / "dead" / f"{ev.id}.error").write_text(json.dumps(error))
    (root / "state" / "fn").mkdir()
    (root / "state" / "fn" / "current.json").write_text('{"function_name": "fn", "version": "1"}')
    yield root
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o750)
    os.chmod(root, 0o750)


def chmod(rel: str, mode: int) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        target = root / rel if rel else root
        target.chmod(mode)
        return target

    return apply


def check_one_line(r: object, code: int, path: Path) -> None:
    """Exit ``code``, one error line on stderr naming ``path`` (or a path under it), no traceback."""
    err: str = r.stderr  # type: ignore[attr-defined]
    assert r.returncode == code, err  # type: ignore[attr-defined]
    errors = [line for line in err.splitlines() if line.startswith("poetctl: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(path) in errors[0] or ("permission denied" in errors[0] and path.name in errors[0]), errors[0]


READ_COMMANDS = [
    ("status",),
    ("tail",),
    ("tail", "-f", "--idle-timeout", "0.1"),
    ("correlate", "c-1"),
    ("fsck",),
    ("fsck", "--repair"),
    ("daemon", "--once", "--no-builtin-handlers"),
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_unreadable_pending_exits_77(tmp_path: Path, spool: Path, args: tuple[str, ...]) -> None:
    """An unreadable events/pending: one line naming it, exit 77 (was a traceback and exit 1)."""
    path = chmod("events/pending", 0)(spool)
    check_one_line(run_bound(tmp_path, "--spool", spool, *args), 77, path)


ALL_COMMANDS = [
    *READ_COMMANDS,
    ("prune",),
    ("prune", "--dry-run"),
    ("dead", "list"),
    ("dead", "purge", "--all"),
    ("dead", "retry", "--all"),
    ("replay", "--all"),
    ("replay", "--all", "--dry-run"),
    ("state", "list"),
    ("state", "show", "fn"),
]


@pytest.mark.parametrize("args", ALL_COMMANDS, ids=" ".join)
def test_unreadable_spool_exits_77(tmp_path: Path, spool: Path, args: tuple[str, ...]) -> None:
    """A spool directory the user cannot enter: every command exits 77 with one line (not a usage error)."""
    chmod("", 0)(spool)
    check_one_line(run_bound(tmp_path, "--spool", spool, *args), 77, spool)


@pytest.mark.parametrize(
    "rel,args",
    [
        ("events/processed", ("replay", "--all")),
        ("events/processed", ("tail", "--state", "processed")),
        ("events/dead", ("dead", "list")),
        ("events/dead", ("dead", "purge", "--all", "--dry-run")),
        ("events/dead", ("tail", "--state", "dead")),
        ("state", ("state", "list")),
        ("run/daemons", ("status",)),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_unreadable_directory_of_a_command_exits_77(
    tmp_path: Path, spool: Path, rel: str, args: tuple[str, ...]
) -> None:
    """The directory a command must list is unreadable: 77 naming it, never an empty answer."""
    (spool / "run" / "daemons").mkdir(exist_ok=True)
    path = chmod(rel, 0)(spool)
    check_one_line(run_bound(tmp_path, "--spool", spool, *args), 77, path)


def test_read_only_pending_stops_the_daemon_with_77(tmp_path: Path, spool: Path) -> None:
    """The daemon cannot claim from a read-only pending/: exit 77 and one error line, not a traceback and 1."""
    chmod("events/pending", 0o550)(spool)
    r = run_bound(tmp_path, "--spool", spool, "daemon", "--once", "--no-builtin-handlers")
    assert r.returncode == 77 and "Traceback" not in r.stderr, r.stderr
    assert next(line for line in r.stderr.splitlines() if "error" in line).startswith(
        "poetctl: error: permission denied"
    )
    assert len(os.listdir(spool / "events" / "pending")) == 1  # nothing lost


@pytest.mark.parametrize("args", [("prune",), ("daemon", "--once", "--no-builtin-handlers")], ids=" ".join)
def test_read_only_run_directory_exits_77(tmp_path: Path, spool: Path, args: tuple[str, ...]) -> None:
    """Locks and heartbeats cannot be written (read-only run/): 77 naming run/, for prune and the daemon."""
    (spool / "run" / "daemons").mkdir(exist_ok=True)
    (spool / "run" / "daemons").chmod(0o550)
    path = chmod("run", 0o550)(spool)
    check_one_line(run_bound(tmp_path, "--spool", spool, *args), 77, path)


def test_index_that_cannot_be_written_exits_77(tmp_path: Path, spool: Path) -> None:
    """replay must update the index; a read-only index gives 77 naming it (the files are left as they were)."""
    from poetctl.backends.fs.index import Index, row_of
    from poetctl.spool import SpoolLayout

    layout = SpoolLayout(spool)
    idx = Index(layout)
    pid = os.listdir(layout.processed)[0][:-5]
    idx.put([row_of(Event.from_dict(json.loads((layout.processed / f"{pid}.json").read_bytes())), "processed")])
    idx.close()
    chmod("index/events.sqlite", 0o440)(spool)
    path = chmod("index", 0o550)(spool)
    r = run_bound(tmp_path, "--spool", spool, "replay", "--all")
    check_one_line(r, 77, path)


# -- status --check: UNKNOWN -------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["", "events/pending", "events/dead", "run/daemons"])
def test_check_on_an_unreadable_spool_is_unknown(tmp_path: Path, spool: Path, rel: str) -> None:
    """status --check: a spool it cannot read is UNKNOWN, exit 3, with the reason (not WARNING, not 1)."""
    (spool / "run" / "daemons").mkdir(exist_ok=True)
    path = chmod(rel, 0)(spool)
    r = run_bound(tmp_path, "--spool", spool, "status", "--check")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("POET UNKNOWN - permission denied") and str(path) in r.stdout
    r = run_bound(tmp_path, "--spool", spool, "status", "--check", "-o", "json")
    assert r.returncode == 3 and json.loads(r.stdout)["check"]["status"] == "UNKNOWN"


def test_check_on_a_missing_spool_is_unknown(tmp_path: Path) -> None:
    """status --check on a spool that does not exist is UNKNOWN too (3); plain status keeps 66."""
    r = run_bound(tmp_path, "--spool", tmp_path / "nope", "status", "--check")
    assert r.returncode == 3 and r.stdout.startswith("POET UNKNOWN - no spool at")
    assert run_bound(tmp_path, "--spool", tmp_path / "nope", "status").returncode == 66


# -- the mapping itself ----------------------------------------------------------------------------


def test_os_errors_map_to_74_and_77_naming_the_path() -> None:
    """EACCES/EPERM are 77, a full disk (ENOSPC) and other I/O errors 74; the message names the path(s)."""
    from poetctl.cli.common import io_failure

    cases = [
        (OSError(errno.EACCES, "Permission denied", "/s/events/pending"), 77, "permission denied: /s/events/pending"),
        (OSError(errno.EPERM, "Operation not permitted", "/s/a", None, "/s/b"), 77, "permission denied: /s/a -> /s/b"),
        (OSError(errno.ENOSPC, "No space left on device", "/s/tmp/x"), 74, "No space left on device: /s/tmp/x"),
        (OSError(errno.EIO, "Input/output error"), 74, "I/O error: Input/output error"),
    ]
    for exc, code, text in cases:
        got = io_failure(exc)
        assert got is not None and got.exit_code == code and text in str(got), (exc, got)
    assert io_failure(ValueError("x")) is None


def test_disk_full_is_one_line_and_74(tmp_path: Path) -> None:
    """A write failing with ENOSPC (stdout on /dev/full) is one line and exit 74, not a traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    root = tmp_path / "spool"
    EventRouter(spool=root).emit("system.health", SAMPLES["system.health"]["valid"][0])
    import subprocess

    from conftest import CLI_TIMEOUT, clean_env, cli_argv

    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            cli_argv("--spool", root, "tail", "-o", "jsonl"),
            stdout=full,
            stderr=subprocess.PIPE,
            env=clean_env(),
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
            check=False,
        )
    err = p.stderr.decode()
    assert p.returncode == 74 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err
    shutil.rmtree(root)


# -- fsck: a file it may not read is reported and left in place ------------------------------------


def _unreadable_file(spool: Path, where: str) -> Path:
    """Make one file of kind ``where`` (created if needed) that fsck may not read; returns it."""
    ev = spool / "events"
    if where in ("pending", "processed", "dead"):
        path = next(p for p in (ev / where).iterdir() if p.name.endswith(".json"))
    elif where == "dead_error":
        path = next((ev / "dead").glob("*.error"))
    elif where == "record":
        pid = next((ev / "pending").iterdir()).name
        path = ev / "records" / pid
        path.write_text('{"done": ["h"], "failures": [], "not_before": 0}')
    elif where == "feedback":
        (spool / "feedback" / "pending").mkdir(parents=True, exist_ok=True)
        path = spool / "feedback" / "pending" / "fb-1.json"
        path.write_text('{"ok": 1}')
    elif where == "state":
        path = spool / "state" / "fn" / "current.json"
    else:  # the journal of a dead owner's in-flight directory, with an event in it
        from poetctl.backends.fs.owner import HOST

        owner = ev / "inflight" / f"{HOST}.{2**22 + 12345}.1"
        owner.mkdir()
        pending = next((ev / "pending").iterdir())
        os.rename(pending, owner / pending.name)
        path = owner / "_journal"
        path.write_text("D\t" + json.dumps([pending.name[:-5], "h"]) + "\n")
    path.chmod(0)
    return path


UNREADABLE_FILES = ["pending", "processed", "dead", "dead_error", "record", "feedback", "state", "journal"]


@pytest.mark.parametrize("where", UNREADABLE_FILES)
@pytest.mark.parametrize("repair", [False, True], ids=["check", "repair"])
def test_fsck_reports_an_unreadable_file_and_leaves_it(tmp_path: Path, spool: Path, where: str, repair: bool) -> None:
    """fsck [--repair] reports a file it may not read (EACCES) as 'unreadable', exit 77, and never moves it."""
    path = _unreadable_file(spool, where)
    before = sorted(str(p.relative_to(spool)) for p in spool.rglob("*") if "index" not in p.parts)
    r = run_bound(tmp_path, "--spool", spool, "fsck", "-o", "json", *(["--repair"] if repair else []))
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    mine = [p for p in doc["problems"] if p["path"] == str(path.relative_to(spool))]
    assert [(p["kind"], p["repaired"]) for p in mine] == [("unreadable", False)], doc["problems"]
    assert "Permission denied" in mine[0]["detail"] and r.returncode == 77, r.stderr
    path.chmod(0o600)
    after = sorted(str(p.relative_to(spool)) for p in spool.rglob("*") if "index" not in p.parts)
    if repair:  # --repair keeps its findings for metrics and alerts; nothing else may change
        after.remove("run/fsck.json")
    assert after == before, "nothing moved, quarantined or removed"
