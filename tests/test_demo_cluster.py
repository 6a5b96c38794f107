"""``make demo-cluster``: the drift story on a local 3-node NATS cluster with two daemons, then everything stops."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_cluster_prints_the_chain_from_nats_and_stops_everything(tmp_path: Path) -> None:
    """The demo exits 0; correlate over NATS prints drift -> alert -> feedback -> regeneration; both daemons
    handled events and stopped with 0; the state reached 1.1.0; no server is left listening afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "poetctl.demo_cluster"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    ports = [int(p) for p in re.findall(r"  n\d: nats://127\.0\.0\.1:(\d+)", out)]
    assert len(ports) == 3
    assert "nats setup on" in out and "R3" in out
    chain = out.split("from the stream (poetctl correlate --mode nats)", 1)[1].split("\n== ", 1)[0]
    lines = chain.strip().splitlines()
    assert lines[0].startswith("drift.detected") and "[processed]" in lines[0]
    for step in ("alert.create_external", "feedback.human_validation", "enhancement.regeneration_needed"):
        assert any(step in ln for ln in lines), step
    assert any("enhancement.regenerated" in ln and "└─" in ln for ln in lines)
    status = out.split("(poetctl status --mode nats)", 1)[1]
    daemons = re.findall(r"│ (vm|\S+)-\S* +│ yes +│ \S+ +│ (\d+) +│", status)
    assert "daemons: 2 alive" in status
    assert len(daemons) == 2 and all(int(n) > 0 for _, n in daemons)  # both daemons shared the work
    assert "current version 1.1.0 (was 1.0.0)" in out
    assert "daemons stopped (exit 0, 0)" in out
    assert not list(tmp_path.iterdir())  # nothing written where it ran (temporary stores, removed)
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"a server still listens on {port}"


def test_makefile_has_the_demo_cluster_target() -> None:
    """`make demo-cluster` runs this module (the README quick start keeps `make demo`)."""
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo-cluster: bytecode\n\t\$\(BIN\)/python -m poetctl\.demo_cluster$", text, re.M)
