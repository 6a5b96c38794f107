"""Nothing outside the spool is ever read, moved or deleted: spool directories swapped for symlinks
and symlinks planted inside them, against every command that changes the spool (fsck --repair,
prune, replay, dead retry/purge, daemon --once and its recovery), plus ``state show``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers.harness import daemon_args, events_dir, ids_in, run_cli, write_config
from daemon_helpers.spool import put_event, uuid7_at

from poetctl.backends.fs.owner import HOST
from poetctl.spool import SpoolLayout

DAY = 86400.0
OLD = 3 * DAY

# Every command that moves or deletes spool files, as argv after ``poetctl`` (the spool is appended).
COMMANDS: dict[str, list[str]] = {
    "fsck-repair": ["fsck", "--repair", "--tmp-age", "1s"],
    "prune": ["prune", "--days", "0", "--dead"],
    "replay": ["replay", "--all"],
    "replay-dead": ["replay", "--from", "dead", "--all"],
    "dead-retry": ["dead", "retry", "--all"],
    "dead-purge": ["dead", "purge", "--all"],
    "daemon-once": ["daemon", "--once", "--no-builtin-handlers"],
}

# Spool directories (relative to the root) that an attacker may swap for a link.
LINKABLE = [
    "events",
    "events/tmp",
    "events/records",
    "events/processed",
    "events/pending",
    "events/dead",
    "events/corrupt",
    "events/inflight",
    "feedback",
    "feedback/pending",
    "feedback/processed",
    "state",
    "run",
    "run/daemons",
    "run/owners",
    "run/buckets",
    "index",
]

# The directories each command works in: a link there must be refused (non-zero exit, named on stderr).
NEEDS: dict[str, set[str]] = {
    "fsck-repair": set(LINKABLE),
    "prune": {"events", "events/processed", "events/tmp", "events/dead", "feedback", "feedback/processed", "index"},
    "replay": {"events", "events/processed", "events/pending", "events/inflight", "events/records", "events/tmp"},
    "replay-dead": {"events", "events/dead", "events/pending", "events/inflight", "events/records", "events/tmp"},
    "dead-retry": {"events", "events/dead", "events/pending", "events/inflight", "events/records", "events/tmp"},
    "dead-purge": {"events", "events/dead"},
    "daemon-once": set(LINKABLE) - {"index"},
}


def make_outside(tmp_path: Path) -> Path:
    """A directory outside the spool with files a careless repair would delete or move."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "poet.toml").write_text("[daemon]\nworkers = 1\n")
    (out / "data.json").write_text('{"a": 1}\n')
    (out / "app.log").write_text("log line\n")
    (out / "secret").write_text("token")
    os.chmod(out / "secret", 0o600)
    (out / ".half.tmp").write_text("writer leftover look-alike")
    eid = uuid7_at(time.time() - 40 * DAY)
    (out / f"{eid}.json").write_text('{"not": "an event"}\n')
    (out / f"{eid}.error").write_text("{}\n")
    (out / "_journal").write_text("D\t[]\n")
    for p in out.iterdir():
        t = time.time() - OLD
        os.utime(p, (t, t))
    return out


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file below ``directory``: content, mode and mtime (ns)."""
    out = {}
    for dirpath, _dirs, files in os.walk(directory):
        for n in files:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(directory))] = (p.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


def populate(sp: Path) -> dict[str, str]:
    """A little of everything: old processed and dead events, a pending one, feedback, state."""
    now = time.time()
    ids = {
        "processed": put_event(sp, "processed", now - 40 * DAY),
        "dead": put_event(sp, "dead", now - 40 * DAY),
        "pending": put_event(sp, "pending"),
    }
    (sp / "feedback" / "processed" / "fb.json").write_text(json.dumps({"received_at": now - 40 * DAY}))
    (sp / "feedback" / "pending" / "fb2.json").write_text(json.dumps({"received_at": now}))
    fn = sp / "state" / "detect_drift"
    (fn / "history").mkdir(parents=True)
    (fn / "current.json").write_text('{"version": "1"}')
    (fn / "history" / "1.json").write_text('{"version": "1"}')
    os.makedirs(sp / "run" / "daemons", exist_ok=True)
    return ids


def link_dir(sp: Path, rel: str, target: Path) -> Path:
    """Replace spool directory ``rel`` with a symlink to ``target``; returns the link."""
    d = sp / rel
    if d.exists():
        shutil.rmtree(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, d)
    return d


def run(tmp_path: Path, sp: Path, command: str) -> Any:
    args = COMMANDS[command]
    if command == "daemon-once":
        cfg = write_config(tmp_path)
        return run_cli(tmp_path, *daemon_args(sp, cfg, handlers=(), once=True))
    return run_cli(tmp_path, *args, "--spool", sp)


@pytest.mark.parametrize("rel", LINKABLE)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_linked_spool_directory_is_refused_and_outside_is_untouched(
    tmp_path: Path, sp: Path, command: str, rel: str
) -> None:
    """A spool directory swapped for a link to an outside directory: nothing there is read, moved or deleted."""
    populate(sp)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    link = link_dir(sp, rel, outside)
    r = run(tmp_path, sp, command)
    assert "Traceback" not in r.stderr, r.stderr
    assert snapshot(outside) == before, f"{command} changed files outside the spool through {rel}: {r.stderr}"
    assert link.is_symlink(), "the link itself is left for the operator"
    if rel in NEEDS[command]:
        assert r.returncode != 0, (r.returncode, r.stdout, r.stderr)
        assert str(link) in r.stderr or str(link) in r.stdout, (r.stdout, r.stderr)


@pytest.mark.parametrize(
    "rel",
    [
        "events/tmp",
        "events/records",
        "events/processed",
        "state",
        "state/detect_drift",
        "state/detect_drift/history",
        "feedback/pending",
        "run/daemons",
    ],
)
def test_fsck_reports_a_linked_directory_as_a_problem(tmp_path: Path, sp: Path, rel: str) -> None:
    """fsck lists a linked spool directory as a linked_dir problem, never repaired, and exits 1 (with --repair too)."""
    populate(sp)
    outside = make_outside(tmp_path)
    link_dir(sp, rel, outside)
    for extra in ([], ["--repair"]):
        r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json", *extra)
        assert r.returncode == 1, r.stderr
        doc = json.loads(r.stdout)
        linked = [p for p in doc["problems"] if p["kind"] == "linked_dir"]
        assert [p["path"] for p in linked] == [rel] and not linked[0]["repaired"]
        # Nothing inside the link was read: none of its files show up as problems or counts.
        assert not any(p["path"].startswith(rel + "/") for p in doc["problems"]), doc["problems"]


def outside_events(tmp_path: Path, sp: Path, state: str) -> tuple[Path, str]:
    """An outside directory holding a valid ``state`` event (and its .error), moved out of the spool."""
    eid = put_event(sp, state, time.time() - 40 * DAY, index=False)
    out = tmp_path / "elsewhere"
    out.mkdir()
    for n in os.listdir(events_dir(sp, state)):
        os.rename(events_dir(sp, state) / n, out / n)
    return out, eid


@pytest.mark.parametrize(
    "argv",
    [
        ["dead", "list"],
        ["dead", "show", "ID"],
        ["dead", "retry", "--all", "--dry-run"],
        ["dead", "purge", "--all", "--dry-run"],
        ["replay", "--from", "dead", "--all", "--dry-run"],
    ],
)
def test_readers_of_a_linked_dead_directory_read_nothing_through_it(tmp_path: Path, sp: Path, argv: list[str]) -> None:
    """dead list/show and the dry runs refuse a linked dead/ (74, naming it) and print nothing read through it."""
    out, eid = outside_events(tmp_path, sp, "dead")
    link = link_dir(sp, "events/dead", out)
    r = run_cli(tmp_path, *[eid if a == "ID" else a for a in argv], "--spool", sp)
    assert r.returncode == 74 and str(link) in r.stderr, (r.returncode, r.stderr)
    assert eid not in r.stdout and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_replay_dry_run_reads_nothing_through_a_linked_processed(tmp_path: Path, sp: Path) -> None:
    """replay --dry-run with events/processed linked: 74, the outside event is neither read nor listed."""
    out, eid = outside_events(tmp_path, sp, "processed")
    link = link_dir(sp, "events/processed", out)
    r = run_cli(tmp_path, "replay", "--all", "--dry-run", "--spool", sp)
    assert r.returncode == 74 and str(link) in r.stderr and eid not in r.stdout, (r.returncode, r.stderr)


def test_the_issue_setup_records_and_tmp_linked(tmp_path: Path, sp: Path) -> None:
    """The issue's setup: events/records and events/tmp linked to a directory with a config, a JSON and an old log."""
    populate(sp)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    link_dir(sp, "events/records", outside)
    link_dir(sp, "events/tmp", outside)
    r = run_cli(tmp_path, "fsck", "--repair", "--spool", sp, "-o", "json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert snapshot(outside) == before
    kinds = sorted((p["kind"], p["path"]) for p in json.loads(r.stdout)["problems"])
    assert kinds == [("linked_dir", "events/records"), ("linked_dir", "events/tmp")]


def test_the_issue_setup_processed_linked_to_a_private_file(tmp_path: Path, sp: Path) -> None:
    """events/processed linked to a directory holding a 0600 file: fsck --repair never moves it into corrupt/."""
    populate(sp)
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE")
    os.chmod(outside / "id_rsa", 0o600)
    link_dir(sp, "events/processed", outside)
    r = run_cli(tmp_path, "fsck", "--repair", "--spool", sp, "-o", "json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (outside / "id_rsa").read_text() == "PRIVATE"
    assert stat.S_IMODE((outside / "id_rsa").stat().st_mode) == 0o600
    assert os.listdir(sp / "events" / "corrupt") == []


PLANT_IN = [
    "events/tmp",
    "events/records",
    "events/processed",
    "events/pending",
    "events/dead",
    "events/corrupt",
    "feedback/pending",
    "feedback/processed",
    "run/daemons",
]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_links_planted_inside_spool_directories_are_never_followed(tmp_path: Path, sp: Path, command: str) -> None:
    """Symlinks as entries (to outside files and directories, with event-like names) are never followed."""
    populate(sp)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    planted = []
    for rel in PLANT_IN:
        d = sp / rel
        d.mkdir(parents=True, exist_ok=True)
        eid = uuid7_at(time.time() - 40 * DAY)
        for name, target in (
            (f"{eid}.json", outside / "data.json"),
            (f"{eid}.error", outside / "secret"),
            (".x.tmp", outside / "app.log"),
            ("sub", outside),
        ):
            os.symlink(target, d / name)
            os.utime(d / name, (time.time() - OLD,) * 2, follow_symlinks=False)
            planted.append((d / name, str(target)))
    r = run(tmp_path, sp, command)
    assert "Traceback" not in r.stderr, r.stderr
    assert snapshot(outside) == before, f"{command} touched files outside the spool: {r.stderr}"
    corrupt = sp / "events" / "corrupt"
    quarantined = {os.readlink(q) for q in corrupt.iterdir() if q.is_symlink()}
    for p, target in planted:
        # A link may stay, be quarantined (as a link) or be removed (the link itself); its target never moves.
        assert p.is_symlink() or target in quarantined or not os.path.lexists(p)


def dead_owner() -> str:
    return f"{HOST}.{2**22 + 4321}.1"


@pytest.mark.parametrize("command", ["daemon-once", "fsck-repair"])
def test_linked_inflight_owner_directory_is_not_recovered_through(tmp_path: Path, sp: Path, command: str) -> None:
    """inflight/<dead owner> linked to an outside directory holding event files: recovery never moves them."""
    populate(sp)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    eid = put_event(sp, "pending")
    os.rename(events_dir(sp, "pending") / f"{eid}.json", outside / f"{eid}.json")
    (outside / "_journal").write_text("D\t" + json.dumps([eid, "effects"]) + "\n")
    (outside / "notes.txt").write_text("keep")
    before = snapshot(outside)
    link = events_dir(sp, "inflight") / dead_owner()
    os.symlink(outside, link)
    r = run(tmp_path, sp, command)
    assert "Traceback" not in r.stderr, r.stderr
    assert snapshot(outside) == before
    assert eid not in ids_in(sp, "pending") and eid not in ids_in(sp, "processed")
    assert link.is_symlink()
    assert str(link) in r.stderr + r.stdout, "the linked owner directory is reported"
    if command == "fsck-repair":
        assert r.returncode == 1


@pytest.mark.parametrize("command", ["daemon-once", "fsck-repair"])
def test_links_inside_a_dead_owner_directory_are_moved_as_links(tmp_path: Path, sp: Path, command: str) -> None:
    """A dead owner's in-flight directory holding links (event name, journal): targets never read or moved."""
    populate(sp)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    owner = events_dir(sp, "inflight") / dead_owner()
    owner.mkdir()
    eid = uuid7_at(time.time())
    os.symlink(outside / "data.json", owner / f"{eid}.json")
    os.symlink(outside / "_journal", owner / "_journal")
    os.symlink(outside / "app.log", owner / "stray.log")
    r = run(tmp_path, sp, command)
    assert "Traceback" not in r.stderr, r.stderr
    assert snapshot(outside) == before
    corrupt = sp / "events" / "corrupt"
    links = {os.readlink(q) for q in corrupt.iterdir() if q.is_symlink()}
    assert str(outside / "data.json") in links and str(outside / "app.log") in links


def test_corrupt_linked_so_quarantine_would_write_through_it(tmp_path: Path, sp: Path) -> None:
    """With events/corrupt linked outside, a bad pending file is not quarantined through the link (fsck, daemon)."""
    populate(sp)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    link_dir(sp, "events/corrupt", outside)
    bad = events_dir(sp, "pending") / f"{uuid7_at(time.time())}.json"
    bad.write_text("{not json")
    for command in ("fsck-repair", "daemon-once"):
        r = run(tmp_path, sp, command)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode != 0 and "events/corrupt" in r.stderr + r.stdout
        assert snapshot(outside) == before
        assert bad.exists(), "the bad file stays where it is until corrupt/ is a real directory"


# -- state show and the other readers of state/ and feedback/ -------------------------------------
def make_state(sp: Path, fn: str = "detect_drift") -> Path:
    d = sp / "state" / fn
    (d / "history").mkdir(parents=True)
    body = json.dumps({"function_name": fn, "version": "1", "updated_at": 1.0})
    (d / "current.json").write_text(body)
    (d / "history" / "1.json").write_text(body)
    return d


@pytest.mark.parametrize("what", ["current.json", "fn_dir", "history_dir", "history_file", "state_dir"])
def test_state_show_never_follows_a_link(tmp_path: Path, sp: Path, what: str) -> None:
    """state show FN refuses (74, one line) when current.json, state/FN, history or a version file is a link."""
    d = make_state(sp)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"function_name": "detect_drift", "version": "SECRET", "password": "hunter2"}))
    other = tmp_path / "other"
    (other / "history").mkdir(parents=True)
    shutil.copy(secret, other / "current.json")
    shutil.copy(secret, other / "history" / "1.json")
    if what == "current.json":
        (d / "current.json").unlink()
        os.symlink(secret, d / "current.json")
    elif what == "fn_dir":
        shutil.rmtree(d)
        os.symlink(other, d)
    elif what == "history_dir":
        shutil.rmtree(d / "history")
        os.symlink(other / "history", d / "history")
    elif what == "history_file":
        (d / "history" / "1.json").unlink()
        os.symlink(secret, d / "history" / "1.json")
    else:
        shutil.rmtree(sp / "state")
        os.makedirs(other / "detect_drift")
        shutil.copy(secret, other / "detect_drift" / "current.json")
        os.symlink(other, sp / "state")
    r = run_cli(tmp_path, "state", "show", "detect_drift", "--spool", sp, "-o", "json")
    assert "hunter2" not in r.stdout and "SECRET" not in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
    assert r.returncode == 74, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "link" in r.stderr, r.stderr


def test_state_list_skips_linked_function_directories(tmp_path: Path, sp: Path) -> None:
    """state list never reads a current.json through a link (the link is reported, the rest listed)."""
    make_state(sp, "good_fn")
    d = make_state(sp, "bad_fn")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"version": "SECRET"}))
    (d / "current.json").unlink()
    os.symlink(secret, d / "current.json")
    r = run_cli(tmp_path, "state", "list", "--spool", sp, "-o", "json")
    assert "SECRET" not in r.stdout and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert "good_fn" in r.stdout


def test_feedback_store_never_reads_or_moves_through_links(tmp_path: Path, sp: Path) -> None:
    """FeedbackStore: a linked record is skipped, a linked pending/ or processed/ is refused."""
    from poetctl.backends.fs.storage import FeedbackStore
    from poetctl.errors import SpoolIOError

    layout = SpoolLayout(sp)
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    os.symlink(secret, layout.feedback_pending / "x.json")
    store = FeedbackStore(layout)
    assert list(store.pending()) == []
    assert store.mark_processed("x") is False
    assert (layout.feedback_pending / "x.json").is_symlink() and secret.exists()
    outside = tmp_path / "out"
    outside.mkdir()
    (outside / "y.json").write_text('{"a": 1}')
    shutil.rmtree(layout.feedback_processed)
    os.symlink(outside, layout.feedback_processed)
    with pytest.raises(SpoolIOError):
        list(store.processed())
    with pytest.raises(SpoolIOError):
        store.add("z", {"a": 1})
    assert sorted(os.listdir(outside)) == ["y.json"]


# -- the spool root itself may be a link ------------------------------------------------------------
def test_a_symlinked_spool_root_is_accepted_by_init_emit_and_daemon(tmp_path: Path) -> None:
    """A spool root that is a link (/var/lib/poet -> data volume) works for init, emit and daemon --once."""
    volume = tmp_path / "volume"
    volume.mkdir()
    root = tmp_path / "poet"
    os.symlink(volume, root)
    r = run_cli(tmp_path, "init", "--spool", root)
    assert r.returncode == 0, r.stderr
    assert (volume / "events" / "pending").is_dir()
    payload = tmp_path / "payload.json"
    payload.write_text('{"service": "x", "status": "healthy"}')
    r = run_cli(tmp_path, "--spool", root, "emit", "system.health", payload)
    assert r.returncode == 0, r.stderr
    eid = r.stdout.strip()
    r = run_cli(tmp_path, *daemon_args(root, write_config(tmp_path), handlers=(), once=True))
    assert r.returncode == 0, r.stderr
    assert eid in ids_in(volume, "processed")
    # A fresh root link to an empty directory is initialised too.
    empty = tmp_path / "empty"
    empty.mkdir()
    os.symlink(empty, tmp_path / "poet2")
    assert run_cli(tmp_path, "init", "--spool", tmp_path / "poet2").returncode == 0
    assert (empty / "events" / "pending").is_dir()


@pytest.mark.parametrize("rel", ["events", "events/pending", "state", "run"])
def test_links_inside_the_tree_are_still_refused_by_init(tmp_path: Path, sp: Path, rel: str) -> None:
    """init (and so emit/daemon) refuses a link below the root, naming it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link_dir(sp, rel, elsewhere)
    r = run_cli(tmp_path, "init", "--spool", sp)
    assert r.returncode == 74 and str(sp / rel) in r.stderr and "link" in r.stderr, r.stderr
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("linked", ["events/tmp", "events/pending"])
@pytest.mark.parametrize("fast", [True, False])
def test_emit_never_writes_through_a_linked_directory(tmp_path: Path, linked: str, fast: bool) -> None:
    """emit refuses (74) a spool whose tmp/ or pending/ is a symlink; nothing appears outside the spool."""
    root = tmp_path / "spool"
    SpoolLayout(root).init()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = root / linked
    target.rmdir()
    target.symlink_to(outside)
    env = {} if fast else {"POETCTL_NO_FASTPATH": "1"}
    r = run_cli(tmp_path, "emit", "system.health", '{"service": "x", "status": "healthy"}', "--spool", root, env=env)
    assert r.returncode == 74, r.stderr
    assert "symlink" in r.stderr and "Traceback" not in r.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("linked", ["events/pending", "events/processed", "events/dead", "index", "run/daemons"])
@pytest.mark.parametrize("command", [("tail", "--state", "all"), ("correlate", "c-1"), ("status",)], ids=" ".join)
def test_read_commands_never_read_through_a_linked_directory(
    tmp_path: Path, linked: str, command: tuple[str, ...]
) -> None:
    """tail, correlate and status refuse (74, one line) a spool with a linked event directory; nothing of it shows."""
    from poetctl import EventRouter

    root = tmp_path / "spool"
    router = EventRouter(spool=root)
    eid = router.emit("system.health", {"service": "x", "status": "healthy"}, correlation_id="c-1")
    (root / "index").mkdir(exist_ok=True)
    (root / "run" / "daemons").mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    target = root / linked
    shutil.move(str(target), str(outside))
    if linked != "events/pending":
        shutil.copy(root / "events" / "pending" / f"{eid}.json", outside / f"{eid}.json")
    target.symlink_to(outside)
    r = run_cli(tmp_path, *command, "--spool", root)
    assert r.returncode == 74, r.stderr
    assert "symlink" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    if linked == "events/pending":
        assert eid not in r.stdout
