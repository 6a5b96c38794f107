"""`poetctl correlate`: connected events as a tree/json/dot/mermaid, orphans, --expect, and the indexed path."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv, load_samples
from terminal import run_on_tty

from poetctl import EventRouter
from poetctl.backends.fs.index import Index, row_of
from poetctl.backends.fs.query import Found
from poetctl.chain import Node, build_forest, check_chain, collect, connected, iter_events, render_tree
from poetctl.event import Event
from poetctl.ids import uuid7
from poetctl.spool import SpoolLayout

SAMPLES = load_samples()
MISSING = "01900000-0000-7000-8000-00000000dead"


def payload(type_: str, i: int = 0) -> dict[str, Any]:
    return json.loads(json.dumps(SAMPLES[type_]["valid"][i]))


def cli(cwd: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run poetctl in ``cwd`` without POET_* variables; text output."""
    p = subprocess.run(
        cli_argv(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=clean_env(),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


def flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The json output's nodes (already a flat list, depth first), checked to link up."""
    ids = {n["id"] for n in nodes}
    for n in nodes:
        assert n["parent"] is None or n["parent"] in ids
        assert set(n["children"]) <= ids
    return nodes


@dataclass
class World:
    spool: Path
    cwd: Path
    drift: str
    alert: str
    feedback: str
    lone_drift: str
    orphan: str
    slow: list[str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.cwd, "--spool", self.spool, "correlate", *args)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A real chain made by the built-in handlers (drift -> alert -> feedback), plus an orphan and a slow chain."""
    cwd = tmp_path_factory.mktemp("correlate")
    spool = cwd / "spool"
    router = EventRouter(spool=spool)
    drift = router.emit(
        "drift.detected", payload("drift.detected"), correlation_id="drift-alert-123", source="poet.generator"
    )
    lone = router.emit("drift.detected", payload("drift.detected", 1), source="poet.generator")
    r = cli(cwd, "--spool", spool, "daemon", "--once")
    assert r.returncode == 0, r.stderr
    alerts = {e.causation_id: e.id for _, e in iter_events(SpoolLayout(spool)) if e.type == "alert.create_external"}
    feedback = router.emit(
        "feedback.human_validation",
        payload("feedback.human_validation"),
        correlation_id="drift-alert-123",
        causation_id=alerts[drift],
        source="external.pagerduty",
    )
    orphan = router.emit("system.health", payload("system.health"), correlation_id="orphan-corr", causation_id=MISSING)
    now = time.time()
    slow = [uuid7(), uuid7(), uuid7()]
    router.emit_many(
        [
            {
                "id": slow[0],
                "type": "drift.detected",
                "payload": payload("drift.detected"),
                "timestamp": now - 3 * 3600,
                "correlation_id": "slow-chain",
            },
            {
                "id": slow[1],
                "type": "alert.create_external",
                "payload": payload("alert.create_external"),
                "timestamp": now - 3600,
                "correlation_id": "slow-chain",
                "causation_id": slow[0],
            },
            {
                "id": slow[2],
                "type": "feedback.human_validation",
                "payload": payload("feedback.human_validation"),
                "timestamp": now - 1800,
                "correlation_id": "slow-chain",
                "causation_id": slow[1],
            },
        ]
    )
    r = cli(cwd, "--spool", spool, "daemon", "--once", "--no-builtin-handlers")
    assert r.returncode == 0, r.stderr
    return World(spool, cwd, drift, alerts[drift], feedback, lone, orphan, slow)


# -- the tree --------------------------------------------------------------------------------


def test_tree_shows_the_chain_with_hop_times(world: World) -> None:
    """By correlation id: drift -> alert -> feedback as an indented tree with state, time and hop."""
    r = world.run("drift-alert-123", "-o", "tree")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert re.match(rf"^drift\.detected  {world.drift}  \[processed\]  \d{{4}}-\d\d-\d\dT[\d:.]+Z$", lines[0])
    assert re.match(rf"^└─ alert\.create_external  {world.alert}  \[processed\]  \S+Z  \+[\d.]+m?s$", lines[1])
    assert re.match(
        rf"^   └─ feedback\.human_validation  {world.feedback}  \[processed\]  \S+Z  \+[\d.]+m?s$", lines[2]
    )


def test_event_id_gives_the_whole_connected_group(world: World) -> None:
    """By event id (any member): the same connected events as by correlation id."""
    by_corr = {n["id"] for n in flatten(json.loads(world.run("drift-alert-123", "-o", "json").stdout))}
    for member in (world.alert, world.feedback):
        got = {n["id"] for n in flatten(json.loads(world.run(member, "-o", "json").stdout))}
        assert got == by_corr == {world.drift, world.alert, world.feedback}


def test_causation_links_join_across_correlation_ids(world: World) -> None:
    """A drift without correlation id still reaches the alert its handler emitted (causation link)."""
    nodes = flatten(json.loads(world.run(world.lone_drift, "-o", "json").stdout))
    assert [n["type"] for n in nodes] == ["drift.detected", "alert.create_external"]
    assert nodes[0]["correlation_id"] is None and nodes[1]["causation_id"] == world.lone_drift


def test_json_is_flat_nodes_with_parent_links(world: World) -> None:
    """--output json: one node per event, depth first, with parent, depth, children ids, hop_seconds and orphan."""
    nodes = json.loads(world.run("drift-alert-123", "-o", "json").stdout)
    assert len(nodes) == 3
    keys = {
        "id",
        "type",
        "topic",
        "state",
        "timestamp",
        "time",
        "source",
        "causation_id",
        "correlation_id",
        "parent",
        "depth",
        "hop_seconds",
        "children",
        "orphan",
    }
    assert all(set(n) == keys for n in nodes)
    root, alert, fb = nodes
    assert (root["id"], alert["id"], fb["id"]) == (world.drift, world.alert, world.feedback)
    assert (root["parent"], alert["parent"], fb["parent"]) == (None, world.drift, world.alert)
    assert (root["depth"], alert["depth"], fb["depth"]) == (0, 1, 2)
    assert (root["children"], alert["children"], fb["children"]) == ([world.alert], [world.feedback], [])
    assert root["hop_seconds"] is None and root["orphan"] is False
    assert alert["hop_seconds"] == pytest.approx(alert["timestamp"] - root["timestamp"], abs=1e-6)
    assert alert["causation_id"] == world.drift and fb["correlation_id"] == "drift-alert-123"
    assert alert["topic"] == "poet/system/alerts" and fb["state"] == "processed"


def test_pipe_gets_json_lines_and_a_tty_the_tree(world: World) -> None:
    """Without --output: JSON lines (the json nodes, one per line) in a pipe, the tree on a TTY."""
    r = world.run("drift-alert-123")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == json.loads(
        world.run("drift-alert-123", "-o", "json").stdout
    )
    code, out, _err = run_on_tty(world.cwd, "--spool", world.spool, "correlate", "drift-alert-123")
    assert code == 0
    assert out.replace("\r\n", "\n") == world.run("drift-alert-123", "-o", "tree").stdout


def test_orphan_cause_is_flagged(world: World) -> None:
    """An event whose causation_id names no event in the spool is marked in the tree and in json."""
    r = world.run("orphan-corr", "-o", "tree")
    assert r.returncode == 0
    assert r.stdout.strip().endswith(f"(cause {MISSING} not found)")
    node = json.loads(world.run(world.orphan, "-o", "json").stdout)[0]
    assert node["orphan"] is True and node["causation_id"] == MISSING


def test_dot_output_is_valid_graphviz(world: World, tmp_path: Path) -> None:
    """--output dot is a digraph that Graphviz accepts (structure checked when dot is not installed)."""
    out = world.run("drift-alert-123", "-o", "dot").stdout
    orphan = world.run("orphan-corr", "-o", "dot").stdout
    for text, nodes, edges in ((out, 3, 2), (orphan, 2, 1)):
        assert text.startswith("digraph ") and text.rstrip().endswith("}")
        assert len(re.findall(r"^  \"[^\"]+\" \[label=", text, re.M)) == nodes
        assert len(re.findall(r"^  \"[^\"]+\" -> \"[^\"]+\"", text, re.M)) == edges
        if shutil.which("dot"):
            p = subprocess.run(["dot", "-Tcanon"], input=text.encode(), capture_output=True, timeout=60, check=False)
            assert p.returncode == 0, p.stderr.decode()
    assert f'"{world.drift}" -> "{world.alert}"' in out


def test_mermaid_output_is_a_flowchart(world: World) -> None:
    """--output mermaid is `graph TD` with "type<br/>id" labels (whole ids) and one edge per causation hop."""
    lines = world.run("drift-alert-123", "-o", "mermaid").stdout.splitlines()
    assert lines[0] == "graph TD"
    nodes = [m for line in lines if (m := re.fullmatch(r'  (n\d+)\["([a-z_.]+)<br/>([0-9a-f-]{8,})"\]', line))]
    edges = [m for line in lines if (m := re.fullmatch(r'  (n\d+) -->\|"\+[0-9.]+m?s"\| (n\d+)', line))]
    assert len(nodes) == 3 and len(edges) == 2 and len(lines) == 6
    assert [m[2] for m in nodes] == ["drift.detected", "alert.create_external", "feedback.human_validation"]
    assert [m[3] for m in nodes] == [world.drift, world.alert, world.feedback]
    assert {(e[1], e[2]) for e in edges} == {("n0", "n1"), ("n1", "n2")}


def test_mermaid_labels_are_unambiguous(tmp_path: Path) -> None:
    """Ids sharing a long prefix (events and missing causes alike) keep distinct, whole-id labels."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    causes = ["missing-cause-000000000001", "missing-cause-000000000002"]
    ids = ["order-2026-11-28-000001-a", "order-2026-11-28-000001-b"]
    for eid, cause in zip(ids, causes, strict=True):
        router.emit("system.health", payload("system.health"), id=eid, correlation_id="amb-1", causation_id=cause)
    r = cli(tmp_path, "--spool", spool, "correlate", "amb-1", "-o", "mermaid")
    assert r.returncode == 0, r.stderr
    labels = re.findall(r'\["([^"]*)"\]', r.stdout)
    assert len(labels) == 4 and len(set(labels)) == 4
    for full in ids + causes:
        assert sum(full in label for label in labels) == 1, (full, labels)


# -- --expect ----------------------------------------------------------------------------------


def test_expect_complete_chain_exits_0(world: World) -> None:
    """--expect passes when a causation path matches the steps in order; steps may skip generations."""
    for steps in ("drift.detected>alert.*>feedback.*", "drift.*>feedback.human_validation", "alert.*"):
        r = world.run("drift-alert-123", "--expect", steps)
        assert r.returncode == 0, (steps, r.stderr)
        assert "chain complete" in r.stderr


def test_expect_incomplete_chain_exits_1_naming_the_step(world: World) -> None:
    """--expect exits 1 and names the first missing step on stderr; order matters."""
    r = world.run("drift-alert-123", "--expect", "drift.detected>alert.*>learning.*")
    assert r.returncode == 1
    assert "step 3 'learning.*' missing" in r.stderr and world.alert in r.stderr
    assert r.stdout  # the tree is still printed
    r = world.run("drift-alert-123", "--expect", "feedback.*>drift.detected")
    assert r.returncode == 1 and "step 2 'drift.detected' missing" in r.stderr


def test_expect_within_bounds_first_to_last_step(world: World) -> None:
    """--within fails a chain slower than the duration and passes a faster one."""
    r = world.run("slow-chain", "--expect", "drift.detected>alert.*>feedback.*", "--within", "2h")
    assert r.returncode == 1 and "--within 2h" in r.stderr
    r = world.run(world.slow[1], "--expect", "drift.detected>alert.*>feedback.*", "--within", "3h")
    assert r.returncode == 0, r.stderr
    r = world.run("slow-chain", "--expect", "alert.*>feedback.*", "--within", "45m")
    assert r.returncode == 0, r.stderr


# -- errors ------------------------------------------------------------------------------------


def test_unknown_id_exits_1(world: World) -> None:
    """An id that is neither an event nor a correlation id exits 1 with a clear message."""
    r = world.run("no-such-thing")
    assert (r.returncode, r.stdout) == (1, "")
    assert f"no event or correlation id no-such-thing in {world.spool}" in r.stderr
    r = world.run("../../etc/passwd")
    assert r.returncode == 1


@pytest.mark.parametrize(
    "args", [["--within", "2h"], ["--expect", "a.b>>c.d"], ["-o", "table"], ["--expect", "drift.*", "--within", "soon"]]
)
def test_usage_errors_exit_2(world: World, args: list[str]) -> None:
    """--within without --expect, an empty step, an unknown format or a bad duration exit 2."""
    r = world.run("drift-alert-123", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_missing_spool_exits_66(tmp_path: Path) -> None:
    """A spool that does not exist exits 66."""
    assert cli(tmp_path, "--spool", tmp_path / "nope", "correlate", "x").returncode == 66


def test_damaged_member_is_reported_and_its_children_flagged(tmp_path: Path) -> None:
    """A damaged file in the chain is warned about on stderr; the events below it show a missing cause."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    a = router.emit("drift.detected", payload("drift.detected"), correlation_id="c-1")
    b = router.emit("alert.create_external", payload("alert.create_external"), correlation_id="c-1", causation_id=a)
    path = spool / "events" / "pending" / f"{a}.json"
    path.write_bytes(path.read_bytes().replace(b"ks_test", b"ks_tezt"))
    r = cli(tmp_path, "--spool", spool, "correlate", "c-1", "-o", "tree")
    assert r.returncode == 0
    assert f"skipped damaged file {path}: bad_checksum" in r.stderr
    assert r.stdout.strip() == r.stdout.strip().splitlines()[0]  # just the alert
    assert b in r.stdout and f"(cause {a} not found)" in r.stdout


# -- while a daemon runs -----------------------------------------------------------------------


def test_correlate_while_a_daemon_processes(tmp_path: Path) -> None:
    """With a daemon running, correlate follows the chain through every state until all is processed."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    with (tmp_path / "daemon.log").open("wb") as log:
        d = subprocess.Popen(
            cli_argv("--spool", spool, "daemon", "--no-builtin-handlers", "--rescan-interval", "0.2"),
            env=clean_env(),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            a = router.emit("drift.detected", payload("drift.detected"), correlation_id="live-1")
            b = router.emit("alert.create_external", payload("alert.create_external"), causation_id=a)
            c = router.emit("feedback.human_validation", payload("feedback.human_validation"), causation_id=b)
            deadline = time.monotonic() + 60
            while True:
                r = cli(
                    tmp_path,
                    "--spool",
                    spool,
                    "correlate",
                    b,
                    "-o",
                    "json",
                    "--expect",
                    "drift.detected>alert.*>feedback.*",
                )
                assert r.returncode == 0, r.stderr
                nodes = flatten(json.loads(r.stdout))
                assert [n["id"] for n in nodes] == [a, b, c]
                if {n["state"] for n in nodes} == {"processed"} or time.monotonic() > deadline:
                    break
            assert {n["state"] for n in nodes} == {"processed"}
        finally:
            d.send_signal(signal.SIGTERM)
            assert d.wait(timeout=CLI_TIMEOUT) == 0


# -- the indexed path --------------------------------------------------------------------------


def _write(
    layout: SpoolLayout,
    router: EventRouter,
    state: str,
    type_: str,
    ts: float,
    template: Event | None = None,
    **links: Any,
) -> Event:
    """Write one event file straight into ``state`` (``template``: reuse a built event, only id/time change)."""
    if template is None:
        ev, _ = router.build(type_, payload(type_), **links)
    else:
        ev = Event.from_dict(template.to_dict())
    ev.id, ev.timestamp, ev.checksum = uuid7(), ts, None
    ev.seal()
    (getattr(layout, state) / f"{ev.id}.json").write_bytes(ev.to_json() + b"\n")
    return ev


def test_index_path_reads_only_connected_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an indexed spool of 2,500+ events, correlate by event id reads just the connected files."""
    import poetctl.backends.fs.query as q

    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    layout = router.layout
    layout.init()
    t = time.time() - 100
    # Unrelated events only need index rows (never read): enough of them that the index is used.
    metrics, _ = router.build("system.metrics", payload("system.metrics"))
    noise = []
    for i in range(2500):
        metrics.id, metrics.timestamp = uuid7(), t + i * 0.01
        noise.append(Event.from_dict(metrics.to_dict()))
    a = _write(layout, router, "processed", "drift.detected", t + 50, correlation_id="big-1")
    b = _write(layout, router, "processed", "alert.create_external", t + 51, causation_id=a.id)
    c = _write(layout, router, "dead", "feedback.human_validation", t + 52, causation_id=b.id, correlation_id="fb-9")
    d = _write(layout, router, "processed", "learning.pattern_detected", t + 53, correlation_id="fb-9")
    e = _write(layout, router, "pending", "function.update", t + 54, causation_id=d.id)
    idx = Index(layout)
    idx.put([row_of(x, "processed") for x in [*noise, a, b, d]] + [row_of(c, "dead")])
    idx.close()
    reads: list[str] = []
    real = q.read_bytes
    monkeypatch.setattr(q, "read_bytes", lambda p, m: reads.append(str(p)) or real(p, m))
    got = collect(layout, b.id)
    assert {k: f.state for k, f in got.items()} == {
        a.id: "processed",
        b.id: "processed",
        c.id: "dead",
        d.id: "processed",
        e.id: "pending",
    }
    assert len(reads) == 5
    reads.clear()
    assert set(collect(layout, b.id, index=False)) == set(got)  # the full scan agrees
    r = cli(tmp_path, "--spool", spool, "correlate", a.id, "-o", "tree", "--expect", "drift.*>alert.*>feedback.*")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and "not found" not in r.stdout
    assert f"{c.id}  [dead]" in r.stdout and f"{e.id}  [pending]" in r.stdout


def test_stale_index_state_falls_back_to_the_files(tmp_path: Path) -> None:
    """If the index says processed but the file has moved (dead, back to pending), it is still found."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    layout = router.layout
    layout.init()
    a = _write(layout, router, "dead", "drift.detected", time.time(), correlation_id="st-1")
    b = _write(layout, router, "pending", "alert.create_external", time.time(), correlation_id="st-1")
    idx = Index(layout)
    idx.put([row_of(a, "processed"), row_of(b, "processed")])
    got = collect(layout, "st-1", index=idx)
    idx.close()
    assert {k: f.state for k, f in got.items()} == {a.id: "dead", b.id: "pending"}


# -- library pieces ------------------------------------------------------------------------------


def _node(eid: str, type_: str, ts: float, cause: str | None = None) -> Found:
    ev = Event(id=eid, type=type_, source="t", timestamp=ts, topic="poet/x", payload={}, causation_id=cause)
    return Found(ts, eid, "processed", Path(eid), ev)


def test_check_chain_picks_the_fastest_path_and_needs_descendants() -> None:
    """check_chain: steps must go down the tree, and --within uses the fastest complete path."""
    members = {
        f.id: f
        for f in [
            _node("a", "drift.detected", 0),
            _node("b", "alert.create_external", 10, "a"),
            _node("c", "feedback.x", 5000, "b"),
            _node("d", "feedback.y", 30, "a"),
            _node("e", "alert.create_external", 40, "d"),
            _node("f", "feedback.z", 100, "e"),
        ]
    }
    roots = build_forest(members)
    assert check_chain(roots, ["drift.*", "alert.*", "feedback.*"]).complete
    verdict = check_chain(roots, ["drift.*", "alert.*", "feedback.*"], within=200)
    assert verdict.complete and verdict.fastest == 100
    assert not check_chain(roots, ["drift.*", "alert.*", "feedback.*"], within=50).complete
    miss = check_chain(roots, ["feedback.y", "feedback.x"])
    assert not miss.complete and "step 2 'feedback.x' missing below feedback.y d" in miss.explain()


def test_causation_cycle_still_renders() -> None:
    """Hand-made ids forming a causation cycle give a finite tree instead of hanging."""
    roots = build_forest({f.id: f for f in [_node("a", "x.y", 1, "b"), _node("b", "x.z", 2, "a")]})
    text = render_tree(roots)
    assert len(text.splitlines()) == 2
    assert not check_chain(roots, ["x.z", "x.y", "x.z"]).complete


def test_demo_api_still_works(tmp_path: Path) -> None:
    """connected(), render_tree() and iter_events() keep the signatures poetctl.demo uses."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    a = router.emit("drift.detected", payload("drift.detected"), correlation_id="demo-1")
    router.emit("alert.create_external", payload("alert.create_external"), causation_id=a)
    layout = SpoolLayout(spool)
    assert {e.type for _, e in iter_events(layout)} == {"drift.detected", "alert.create_external"}
    roots = connected(layout, "demo-1")
    assert isinstance(roots[0], Node) and len(roots[0].children) == 1
    assert render_tree(roots).splitlines()[1].startswith("└─ alert.create_external")
