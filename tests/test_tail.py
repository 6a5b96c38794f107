"""`poetctl tail`: selection, filters, formats, exit codes and follow mode, on real spools and processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv, load_samples
from daemon_helpers.harness import heartbeat_of, wait_for

from poetctl import EventRouter
from poetctl.backends.fs.index import Index, row_of
from poetctl.cloudevents import from_cloudevent
from poetctl.ids import uuid7
from poetctl.spool import SpoolLayout
from poetctl.transport import Query

SAMPLES = load_samples()
FOLLOW_TIMEOUT = 60


def payload(type_: str, i: int = 0) -> dict[str, Any]:
    return json.loads(json.dumps(SAMPLES[type_]["valid"][i]))


def cli(cwd: Path, *args: str | os.PathLike[str], input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run poetctl in ``cwd`` without POET_* variables; text output."""
    p = subprocess.run(
        cli_argv(*args),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=clean_env(),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


def stored(spool: Path) -> dict[str, tuple[str, dict[str, Any], bytes]]:
    """Every event file: id -> (state, envelope, raw bytes)."""
    layout = SpoolLayout(spool)
    out = {}
    dirs = [("pending", layout.pending), ("processed", layout.processed), ("dead", layout.dead)]
    dirs += [("inflight", d) for d in layout.inflight_dirs()]
    for state, d in dirs:
        for p in sorted(d.glob("*.json")):
            raw = p.read_bytes()
            out[p.name[:-5]] = (state, json.loads(raw), raw)
    return out


def ids_of(stdout: str) -> list[str]:
    return [json.loads(line)["id"] for line in stdout.splitlines() if line.strip()]


def newest_ids(events: dict[str, tuple[str, dict[str, Any], bytes]], n: int, pred: Any = None) -> list[str]:
    """The ids tail should print: the n newest matches, oldest first."""
    sel = [(e["timestamp"], eid) for eid, (s, e, _) in events.items() if pred is None or pred(s, e)]
    return [eid for _, eid in sorted(sel)[-n:]] if n else []


@dataclass
class World:
    spool: Path
    cwd: Path
    events: dict[str, tuple[str, dict[str, Any], bytes]]
    now: float

    def tail(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return cli(self.cwd, "--spool", self.spool, "tail", *args, input=input)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """One spool with events in every state (processed, dead, pending, in flight), two of them backdated."""
    cwd = tmp_path_factory.mktemp("tail")
    spool = cwd / "spool"
    router = EventRouter(spool=spool)
    now = time.time()
    router.emit_many(
        [(t, payload(t)) for t in sorted(SAMPLES)]
        + [
            {
                "type": "system.metrics",
                "payload": payload("system.metrics"),
                "timestamp": now - 3 * 86400,
                "correlation_id": "old-corr",
            },
            {
                "type": "drift.detected",
                "payload": payload("drift.detected"),
                "timestamp": now - 3 * 3600,
                "correlation_id": "old-corr",
                "source": "poet.generator",
            },
            {"type": "system.health", "payload": payload("system.health"), "expires_at": now - 60},
        ]
    )
    done = cli(cwd, "--spool", spool, "daemon", "--once", "--no-builtin-handlers")
    assert done.returncode == 1, done.stderr  # 1: the expired event was dead-lettered
    router.emit_many(
        [("function.execution", payload("function.execution")), ("system.health", payload("system.health"))]
    )
    router.emit(
        "feedback.human_validation", payload("feedback.human_validation"), source="ci", correlation_id="pend-corr"
    )
    # An event claimed by some daemon: in flight.
    flying = router.emit("function.update", payload("function.update"), source="ci")
    owner = spool / "events" / "inflight" / "host.1.x"
    owner.mkdir()
    os.rename(spool / "events" / "pending" / f"{flying}.json", owner / f"{flying}.json")
    events = stored(spool)
    assert {s for s, _, _ in events.values()} == {"pending", "inflight", "processed", "dead"}
    return World(spool, cwd, events, now)


# -- selection -------------------------------------------------------------------------------


def test_pattern_matches_topics_below_it(world: World) -> None:
    """`tail poet/functions/*` shows every function event and nothing else."""
    r = world.tail("-n", "1000", "poet/functions/*")
    assert r.returncode == 0, r.stderr
    want = {eid for eid, (_, e, _) in world.events.items() if e["topic"].startswith("poet/functions/")}
    assert set(ids_of(r.stdout)) == want and len(ids_of(r.stdout)) == len(want)


def test_several_patterns_are_alternatives(world: World) -> None:
    """Several patterns OR together, and '**' matches any depth."""
    r = world.tail("-n", "1000", "poet/system/alerts", "poet/**/pending")
    assert r.returncode == 0, r.stderr
    want = {
        eid for eid, (_, e, _) in world.events.items() if e["topic"] in ("poet/system/alerts", "poet/feedback/pending")
    }
    assert set(ids_of(r.stdout)) == want


def test_default_is_last_ten_oldest_first_as_jsonl(world: World) -> None:
    """Without options a pipe gets the 10 newest events as JSON lines, oldest first."""
    r = world.tail()
    assert r.returncode == 0, r.stderr
    assert ids_of(r.stdout) == newest_ids(world.events, 10)


def test_n_limits_the_count(world: World) -> None:
    """`-n 3` prints the three newest matches, across states."""
    r = world.tail("-n", "3")
    assert ids_of(r.stdout) == newest_ids(world.events, 3)


def test_since_and_until_take_durations_and_rfc3339(world: World) -> None:
    """--since/--until accept 2h, 4d and RFC 3339 times and select by event time."""
    old = {eid for eid, (_, e, _) in world.events.items() if e["timestamp"] < world.now - 3600}
    assert len(old) == 2
    recent = world.tail("-n", "1000", "--since", "2h")
    assert set(ids_of(recent.stdout)) == set(world.events) - old
    assert set(ids_of(world.tail("-n", "1000", "--until", "1h").stdout)) == old
    assert set(ids_of(world.tail("-n", "1000", "--since", "4d", "--until", "1h").stdout)) == old

    def rfc(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")

    r = world.tail("--since", rfc(world.now - 4 * 3600), "--until", rfc(world.now - 2 * 3600))
    assert [world.events[i][1]["type"] for i in ids_of(r.stdout)] == ["drift.detected"]


def test_type_correlation_and_source_filters(world: World) -> None:
    """--type globs (repeatable), --correlation-id and --source narrow the selection."""
    r = world.tail("-n", "100", "--type", "feedback.*", "--type", "alert.create_*")
    want = {
        eid
        for eid, (_, e, _) in world.events.items()
        if e["type"].startswith("feedback.") or e["type"] == "alert.create_external"
    }
    assert set(ids_of(r.stdout)) == want
    r = world.tail("--correlation-id", "old-corr")
    assert len(ids_of(r.stdout)) == 2
    r = world.tail("--source", "ci")
    assert {world.events[i][1]["type"] for i in ids_of(r.stdout)} == {"feedback.human_validation", "function.update"}


@pytest.mark.parametrize("state", ["pending", "processed", "dead", "inflight", "all"])
def test_state_filter(world: World, state: str) -> None:
    """--state picks pending, processed, dead or in-flight events; all includes in-flight."""
    r = world.tail("-n", "1000", "--state", state, "-o", "table")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    want = {eid for eid, (s, _, _) in world.events.items() if state in ("all", s)}
    assert {row[3] for row in rows} == want
    assert {row[5] for row in rows} == ({"pending", "inflight", "processed", "dead"} if state == "all" else {state})


# -- formats ---------------------------------------------------------------------------------


def test_table_has_time_type_topic_id_correlation_state(world: World) -> None:
    """--output table prints one row per event: RFC 3339 time, type, topic, id, correlation, state."""
    r = world.tail("-n", "5", "-o", "table")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["time", "type", "topic", "id", "correlation", "state"]
    ids = newest_ids(world.events, 5)
    for line, eid in zip(lines[1:], ids, strict=True):
        cells = line.split()
        state, env, _ = world.events[eid]
        assert dt.datetime.fromisoformat(cells[0].replace("Z", "+00:00")).timestamp() == pytest.approx(
            env["timestamp"], abs=0.001
        )
        assert cells[1:] == [env["type"], env["topic"], eid, env.get("correlation_id", "-"), state]


def test_json_is_an_array_of_whole_envelopes(world: World) -> None:
    """--output json prints the selected envelopes (checksum included) as one JSON array."""
    r = world.tail("-n", "4", "-o", "json")
    doc = json.loads(r.stdout)
    assert [e["id"] for e in doc] == newest_ids(world.events, 4)
    assert all(e == world.events[e["id"]][1] for e in doc)


def test_jsonl_prints_envelopes_exactly_as_stored(world: World) -> None:
    """--output jsonl prints each stored file's JSON byte for byte, one compact line each."""
    r = world.tail("-n", "1000", "-o", "jsonl")
    lines = r.stdout.encode().splitlines()
    assert len(lines) == len(world.events)
    for line in lines:
        eid = json.loads(line)["id"]
        assert line == world.events[eid][2].strip()


def test_jsonl_round_trips_through_emit_batch(world: World, tmp_path: Path) -> None:
    """`tail --output jsonl | emit --batch -` recreates the same events, byte for byte, in another spool."""
    out = world.tail("-n", "1000", "-o", "jsonl")
    second = tmp_path / "second"
    r = cli(tmp_path, "--spool", second, "emit", "--init", "--batch", "-", input=out.stdout.encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ids_of(out.stdout)
    copied = stored(second)
    assert set(copied) == set(world.events)
    assert all(copied[i][2] == world.events[i][2] for i in copied)


def test_cloudevents_output_maps_back_to_the_stored_envelopes(world: World) -> None:
    """--output cloudevents prints CloudEvents 1.0 JSON lines that map back to the exact envelopes."""
    r = world.tail("-n", "1000", "-o", "cloudevents")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(world.events)
    for line in lines:
        ce = json.loads(line)
        assert ce["specversion"] == "1.0" and ce["datacontenttype"] == "application/json"
        assert from_cloudevent(ce) == world.events[ce["id"]][1]


# -- exit codes and damage -------------------------------------------------------------------


def test_nothing_matched_exits_1_with_a_message(world: World, tmp_path: Path) -> None:
    """No match exits 1 with 'no events match' on stderr; an empty spool likewise."""
    r = world.tail("--type", "no.such")
    assert (r.returncode, r.stdout) == (1, "")
    assert "no events match" in r.stderr and "no.such" in r.stderr
    SpoolLayout(tmp_path / "empty").init()
    r = cli(tmp_path, "--spool", tmp_path / "empty", "tail")
    assert r.returncode == 1 and "no events match" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["poet/fun%ctions"],
        ["poet//x/y z"],
        ["--state", "done"],
        ["--since", "yesterday"],
        ["-o", "dot"],
        ["--count", "3"],
        ["--idle-timeout", "1"],
        ["-f", "-o", "json"],
    ],
)
def test_usage_errors_exit_2(world: World, args: list[str]) -> None:
    """A bad pattern segment, state, time, format or option combination exits 2 with a message."""
    r = world.tail(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip()


def test_missing_spool_exits_66(tmp_path: Path) -> None:
    """A spool that does not exist exits 66 and says how to create one."""
    r = cli(tmp_path, "--spool", tmp_path / "nope", "tail")
    assert r.returncode == 66 and "poetctl init" in r.stderr


def test_damaged_files_are_reported_and_skipped(tmp_path: Path) -> None:
    """A file failing its checksum, or not JSON at all, is warned about on stderr and skipped."""
    spool = tmp_path / "spool"
    ids = EventRouter(spool=spool).emit_many([("system.health", payload("system.health"))] * 3)
    bad = spool / "events" / "pending" / f"{ids[1]}.json"
    bad.write_bytes(bad.read_bytes().replace(b'"status"', b'"statuz"'))
    junk = spool / "events" / "pending" / f"{uuid7()}.json"
    junk.write_bytes(b"{not json")
    r = cli(tmp_path, "--spool", spool, "tail")
    assert r.returncode == 0, r.stderr
    assert ids_of(r.stdout) == [ids[0], ids[2]]
    assert f"poetctl: warning: skipped damaged file {bad}: bad_checksum" in r.stderr
    assert f"skipped damaged file {junk}: bad_json" in r.stderr


# -- scale: -n reads only what it prints -----------------------------------------------------


def build_processed(spool: Path, n: int, *, index: bool = True, files: int | None = None) -> list[str]:
    """``n`` processed events written straight into events/processed, plus index rows: a fast fixture.

    ``files``: write files for only the newest that many (older ones exist only in the index).
    """
    router = EventRouter(spool=spool)
    layout = router.layout
    layout.init()
    base, _ = router.build("function.execution", payload("function.execution"))
    rows, ids = [], []
    for i in range(n):
        base.id, base.timestamp, base.checksum = uuid7(), base.timestamp + 0.001, None
        if i % 3 == 0:
            base.type, base.topic = "system.metrics", "poet/system/metrics"
        else:
            base.type, base.topic = "function.execution", "poet/functions/detect_drift/execution"
        base.seal()
        if files is None or i >= n - files:
            (layout.processed / f"{base.id}.json").write_bytes(base.to_json() + b"\n")
        rows.append(row_of(base, "processed"))
        ids.append(base.id)
    if index:
        idx = Index(layout)
        idx.put(rows)
        idx.close()
    return ids


@pytest.mark.parametrize("with_index", [True, False])
def test_n_reads_only_top_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_index: bool) -> None:
    """`-n 5` on 2,100+ processed events reads about 5 files, from the index or from a listing."""
    import poetctl.backends.fs.query as q

    spool = tmp_path / "spool"
    ids = build_processed(spool, 2500 if with_index else 2100, index=with_index, files=100 if with_index else None)
    reads: list[str] = []
    real = q.read_bytes
    monkeypatch.setattr(q, "read_bytes", lambda p, m: reads.append(str(p)) or real(p, m))
    layout = SpoolLayout(spool)
    idx = q.open_index(layout, q.SMALL_SPOOL)
    assert (idx is not None) == with_index
    got = q.newest(layout, Query(topics=["poet/functions/*"]), limit=5, index=idx)
    want = [i for n, i in enumerate(ids) if n % 3][-5:][::-1]
    assert [f.id for f in got] == want
    assert len(reads) <= 7


def test_tail_cli_uses_the_index_on_a_large_spool(tmp_path: Path) -> None:
    """On an indexed spool larger than SMALL_SPOOL the CLI prints the newest matches, in order."""
    spool = tmp_path / "spool"
    ids = build_processed(spool, 2500, files=50)
    r = cli(tmp_path, "--spool", spool, "tail", "-n", "4", "poet/functions/*")
    assert r.returncode == 0, r.stderr
    assert ids_of(r.stdout) == [i for n, i in enumerate(ids) if n % 3][-4:]


# -- follow mode -----------------------------------------------------------------------------


class Daemon:
    """A `poetctl daemon --no-builtin-handlers` subprocess; stopped with SIGTERM."""

    def __init__(self, cwd: Path, spool: Path) -> None:
        self.log = (cwd / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            cli_argv("--spool", spool, "daemon", "--no-builtin-handlers", "--rescan-interval", "0.2"),
            env=clean_env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=CLI_TIMEOUT)
        self.log.close()
        return code


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    """A starter for daemons on a spool; any still running at the end are killed."""
    started: list[Daemon] = []

    def start(spool: Path) -> Daemon:
        d = Daemon(tmp_path, spool)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def follow(cwd: Path, spool: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `poetctl tail -f ARGS` with its output piped."""
    return subprocess.Popen(
        cli_argv("--spool", spool, "tail", "-f", *args),
        env=clean_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def watching(p: subprocess.Popen[bytes], directory: Path) -> bool:
    """True once ``p`` has an inotify watch on ``directory`` (listed in its /proc fdinfo by inode).

    tail -f sets the watch after it has listed what is already there, so from then on every
    commit is new to it: tests that mean "new events" wait for this instead of hoping that
    the process has started by the time they emit.
    """
    if p.poll() is not None:
        raise AssertionError(f"tail exited ({p.returncode}) before it watched {directory}")
    ino = f" ino:{os.stat(directory).st_ino:x} "
    fdinfo = f"/proc/{p.pid}/fdinfo"
    try:
        fds = os.listdir(fdinfo)
    except OSError:
        return False
    for fd in fds:
        try:
            with open(f"{fdinfo}/{fd}") as fh:
                if any(line.startswith("inotify ") and ino in line for line in fh):
                    return True
        except OSError:
            continue
    return False


def following(p: subprocess.Popen[bytes], spool: Path) -> None:
    """Wait until ``tail -f`` (``p``) watches the spool's pending directory."""
    wait_for(lambda: watching(p, spool / "events" / "pending"), "tail -f to watch events/pending")


def finish(p: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=FOLLOW_TIMEOUT)
    return p.returncode, out.decode(), err.decode()


def test_follow_count_prints_exactly_the_new_events(tmp_path: Path) -> None:
    """`tail -f --count 3` on an empty spool prints the 3 events emitted meanwhile, then exits 0."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    p = follow(tmp_path, spool, "--count", "3")
    following(p, spool)
    ids = [router.emit("system.health", payload("system.health")) for _ in range(3)]
    code, out, err = finish(p)
    assert code == 0, err
    assert ids_of(out) == ids


def read_lines(p: subprocess.Popen[bytes], n: int) -> list[str]:
    """The first ``n`` lines ``p`` prints (fails instead of hanging if it never does)."""
    got: list[str] = []
    reader = threading.Thread(
        target=lambda: got.extend(p.stdout.readline().decode() for _ in range(n)),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    reader.join(FOLLOW_TIMEOUT)
    assert not reader.is_alive(), f"tail printed {got!r}, expected {n} lines"
    return got


def test_follow_prints_backlog_then_new_matches_only(tmp_path: Path) -> None:
    """-f first prints the last -n matches, then only new events passing the filters (table rows)."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    old = router.emit_many([("system.health", payload("system.health"))] * 3)
    p = follow(tmp_path, spool, "-n", "2", "--count", "4", "--type", "system.*", "-o", "table")
    first = read_lines(p, 3)  # header + the last 2: from now on tail is following
    router.emit("drift.detected", payload("drift.detected"))
    new = router.emit_many([("system.metrics", payload("system.metrics")), ("system.health", payload("system.health"))])
    code, out, err = finish(p)
    assert code == 0, err
    lines = first + out.splitlines()
    assert lines[0].split()[:3] == ["time", "type", "topic"]
    assert [line.split()[3] for line in lines[1:]] == old[1:] + new


def test_follow_with_a_running_daemon_never_prints_an_id_twice(tmp_path: Path, daemon: Any) -> None:
    """While a daemon moves events on, -f still prints every new event exactly once; the daemon stops on SIGTERM."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    d = daemon(spool)
    # --type: the daemon's own system.health heartbeat events must not count.
    p = follow(tmp_path, spool, "-n", "100", "--count", "12", "--type", "system.metrics", "-o", "jsonl")
    # Both running before the first emit: the events are new to tail and moved on meanwhile.
    wait_for(lambda: d.proc.poll() is not None or heartbeat_of(spool, d.proc.pid), "the daemon to start")
    assert d.proc.poll() is None, f"the daemon exited with {d.proc.returncode}"
    following(p, spool)
    ids: list[str] = []
    for _ in range(4):
        ids += router.emit_many([("system.metrics", payload("system.metrics"))] * 3)
        time.sleep(0.2)
    code, out, err = finish(p)
    assert code == 0, err
    assert sorted(ids_of(out)) == sorted(ids)
    assert d.stop() == 0


def test_follow_state_processed_waits_for_the_daemon(tmp_path: Path, daemon: Any) -> None:
    """`-f --state processed` prints events once the daemon has processed them, with that state."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    p = follow(tmp_path, spool, "--state", "processed", "--count", "3", "--type", "system.metrics", "-o", "table")
    following(p, spool)
    ids = router.emit_many([("system.metrics", payload("system.metrics"))] * 3)
    d = daemon(spool)
    code, out, err = finish(p)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert sorted(r[3] for r in rows) == sorted(ids)
    assert {r[5] for r in rows} == {"processed"}
    assert d.stop() == 0


def test_follow_count_with_idle_timeout_exits_0_once_reached(tmp_path: Path) -> None:
    """The README's CI line `-f --count 3 --idle-timeout 60 TOPIC` exits 0 as soon as the 3rd event is printed,
    whether the events were there before (the backlog) or arrive while it follows."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    p = follow(tmp_path, spool, "--count", "3", "--idle-timeout", "60", "poet/system/health")
    ids = [router.emit("system.health", payload("system.health")) for _ in range(3)]
    code, out, err = finish(p)
    assert (code, ids_of(out)) == (0, ids), err
    code, out, err = finish(follow(tmp_path, spool, "--count", "3", "--idle-timeout", "60", "poet/system/health"))
    assert (code, ids_of(out)) == (0, ids), err


def test_follow_idle_timeout_ends_the_stream(tmp_path: Path) -> None:
    """--idle-timeout exits 0 after printing, 1 if nothing was printed or --count was not reached."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    code, out, err = finish(follow(tmp_path, spool, "--idle-timeout", "0.3"))
    assert (code, out) == (1, "") and "no events match" in err
    ids = router.emit_many([("system.health", payload("system.health"))] * 2)
    code, out, err = finish(follow(tmp_path, spool, "--idle-timeout", "0.3"))
    assert (code, ids_of(out)) == (0, ids)
    code, out, err = finish(follow(tmp_path, spool, "--idle-timeout", "0.3", "--count", "5"))
    assert code == 1 and ids_of(out) == ids and "2 of 5" in err


def test_tail_n_while_a_daemon_processes(tmp_path: Path, daemon: Any) -> None:
    """`tail -n` during processing lists each event once, in whatever state it is in at that moment."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    d = daemon(spool)
    emitted: list[str] = []
    for _ in range(5):
        emitted += router.emit_many([("system.metrics", payload("system.metrics"))] * 20)
        r = cli(tmp_path, "--spool", spool, "tail", "-n", "1000", "--type", "system.metrics", "-o", "table")
        assert r.returncode == 0, r.stderr
        seen = [line.split()[3] for line in r.stdout.splitlines()[1:]]
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(emitted)
    assert d.stop() == 0


def test_vanished_file_is_looked_up_where_it_went(tmp_path: Path) -> None:
    """An arrival already moved out of pending by the daemon is found by id in processed."""
    from poetctl.backends.fs.query import load_or_find

    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    eid = router.emit("system.health", payload("system.health"))
    layout = router.layout
    os.rename(layout.pending / f"{eid}.json", layout.processed / f"{eid}.json")
    f = load_or_find(layout, layout.pending / f"{eid}.json", "pending", eid)
    assert f is not None and (f.id, f.state) == (eid, "processed")
