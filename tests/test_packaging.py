"""The wheel ships the schemas and the CLI; `emit` starts without the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import CLI_TIMEOUT, clean_env

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"rich", "jsonschema", "watchdog", "pydantic"}


def test_wheel_contains_schemas_and_cli(tmp_path: Path) -> None:
    """The built wheel holds every schema under poetctl/_schemas/ and the poetctl.cli package."""
    out = tmp_path / "dist"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list(out.glob("poetctl-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        shipped = {n[len("poetctl/_schemas/") :] for n in names if n.startswith("poetctl/_schemas/")}
        source = {str(p.relative_to(REPO / "schemas")) for p in (REPO / "schemas").rglob("*.json")}
        assert len(source) == 22  # the envelope, the seed's 20 types, system.alert
        assert shipped == source
        assert "poetctl/_schemas/envelope.json" in names
        assert "poetctl/_schemas/drift.detected/1.json" in names
        assert "poetctl/cli/__init__.py" in names
        assert "poetctl/__main__.py" in names
        # Started by path with `python -I -S`, never imported by name: it must ship beside the mover.
        assert "poetctl/backends/fs/_mover_child.py" in names
        assert "poetctl/backends/fs/mover.py" in names
        assert "poetctl/spool/__init__.py" in names
        assert json.loads(zf.read("poetctl/_schemas/envelope.json")) == json.loads(
            (REPO / "schemas" / "envelope.json").read_bytes()
        )
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "poetctl = poetctl.cli:main" in zf.read(entry_points).decode()


def test_emit_does_not_import_heavy_modules(spool: Path, tmp_path: Path) -> None:
    """`python -X importtime -m poetctl emit` imports no rich, jsonschema, watchdog, pydantic."""
    pfile = tmp_path / "health.json"
    pfile.write_text(json.dumps({"service": "svc", "status": "healthy"}))
    r = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "poetctl",
            "emit",
            "system.health",
            str(pfile),
            "--spool",
            str(spool),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    assert (spool / "events" / "pending" / (r.stdout.strip() + ".json")).is_file()
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    ]
    assert "poetctl.router" in modules  # the import list was really captured
    heavy = sorted({m for m in modules if m.split(".")[0] in HEAVY})
    assert heavy == []
