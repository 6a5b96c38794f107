"""Causal chains far deeper than Python's recursion limit (10,000 hops): correlate's tree, json, jsonl,
dot, mermaid and --expect all work, and the tree's width stays bounded."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv, load_samples

from poetctl import chain as chain_lib
from poetctl.backends.fs.index import Index, row_of
from poetctl.backends.fs.query import Found
from poetctl.event import Event
from poetctl.ids import uuid7
from poetctl.spool import SpoolLayout

HOPS = 10_000
SAMPLES = load_samples()


@dataclass
class Chain:
    cwd: Path
    spool: Path
    ids: list[str]
    found: dict[str, Found]


def chain_events(n: int, start: float) -> list[Event]:
    """drift.detected -> (n-2) system.metrics -> feedback.human_validation, each caused by the one before."""
    events: list[Event] = []
    for i in range(n):
        type_ = "drift.detected" if i == 0 else "feedback.human_validation" if i == n - 1 else "system.metrics"
        d = {
            "id": uuid7(),
            "type": type_,
            "source": "test",
            "timestamp": start + i * 0.001,
            "topic": "poet/test",
            "correlation_id": "deep-1" if i == 0 else None,
            "causation_id": events[-1].id if events else None,
            "metadata": {"version": "1.0", "environment": "dev", "service": "poet"},
            "payload": SAMPLES[type_]["valid"][0],
        }
        events.append(Event.from_dict({k: v for k, v in d.items() if v is not None}).seal())
    return events


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A 10,000-hop causation chain written straight into processed/, with its index rows."""
    cwd = tmp_path_factory.mktemp("deep")
    layout = SpoolLayout(cwd / "spool")
    layout.init()
    events = chain_events(HOPS, time.time() - 3600)
    found = {}
    for ev in events:
        path = layout.processed / f"{ev.id}.json"
        path.write_bytes(ev.to_json())
        found[ev.id] = Found(ev.timestamp, ev.id, "processed", path, ev)
    idx = Index(layout)
    idx.put([row_of(ev, "processed") for ev in events])
    idx.close()
    return Chain(cwd, layout.root, [e.id for e in events], found)


def correlate(c: Chain, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        cli_argv("--spool", c.spool, "correlate", *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=clean_env(),
        cwd=c.cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


def test_json_of_a_10000_hop_chain(chain: Chain) -> None:
    """-o json of a 10,000-hop chain: every node once, depth first, parent and depth linking the chain."""
    r = correlate(chain, chain.ids[HOPS // 2], "-o", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    nodes = json.loads(r.stdout)
    assert [n["id"] for n in nodes] == chain.ids
    assert [n["depth"] for n in nodes] == list(range(HOPS))
    assert [n["parent"] for n in nodes] == [None, *chain.ids[:-1]]
    assert nodes[-1]["children"] == [] and nodes[0]["children"] == [chain.ids[1]]


def test_jsonl_of_a_10000_hop_chain(chain: Chain) -> None:
    """-o jsonl (the pipe default): one node per line, the same nodes as json."""
    r = correlate(chain, "deep-1")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == HOPS
    assert json.loads(lines[-1])["depth"] == HOPS - 1 and json.loads(lines[-1])["id"] == chain.ids[-1]


def test_tree_of_a_10000_hop_chain_has_bounded_width(chain: Chain) -> None:
    """The tree prints one line per event; past INDENT_LIMIT hops lines stop indenting and show their depth."""
    limit = getattr(chain_lib, "INDENT_LIMIT", 32)
    r = correlate(chain, "deep-1", "-o", "tree")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == HOPS
    assert all(chain.ids[i] in lines[i] for i in range(HOPS))
    assert max(len(line) for line in lines) < 3 * limit + 200
    assert f"└─[{HOPS - 1}] feedback.human_validation  {chain.ids[-1]}" in lines[-1]
    assert f"└─ system.metrics  {chain.ids[limit]}" in lines[limit]
    assert f"└─[{limit + 1}] system.metrics" in lines[limit + 1]


@pytest.mark.parametrize("fmt,edge", [("dot", " -> "), ("mermaid", " -->|")])
def test_dot_and_mermaid_of_a_10000_hop_chain(chain: Chain, fmt: str, edge: str) -> None:
    """dot and mermaid draw all 9,999 hops."""
    r = correlate(chain, "deep-1", "-o", fmt)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sum(edge in line for line in r.stdout.splitlines()) == HOPS - 1


def test_expect_across_10000_hops(chain: Chain) -> None:
    """--expect finds a 3-step chain spanning 10,000 hops, and names the missing step of an impossible one."""
    r = correlate(chain, "deep-1", "-o", "jsonl", "--expect", "drift.detected>system.*>feedback.*")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "chain complete" in r.stderr
    r = correlate(chain, "deep-1", "-o", "jsonl", "--expect", "drift.detected>feedback.*>system.*")
    assert r.returncode == 1
    assert f"step 3 'system.*' missing below feedback.human_validation {chain.ids[-1]}" in r.stderr


def test_library_walks_are_iterative(chain: Chain) -> None:
    """In-process, with the recursion limit at its default: forest, tree, json and check_chain all work."""
    import sys

    assert sys.getrecursionlimit() <= 10_000
    roots = chain_lib.build_forest(chain.found)
    assert len(roots) == 1
    assert len(chain_lib.render_tree(roots).splitlines()) == HOPS
    assert len(chain_lib.to_json(roots)) == HOPS
    verdict = chain_lib.check_chain(roots, ["drift.*", "system.*", "system.*", "feedback.*"])
    assert verdict.complete
    assert verdict.fastest == pytest.approx((HOPS - 1) * 0.001, abs=1e-3)
    missing = chain_lib.check_chain(roots, ["feedback.*", "drift.*"])
    assert not missing.complete and [n.event.id for n in missing.matched] == [chain.ids[-1]]
