"""The README's everyday commands run as written against the shipped examples/ files."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import RunCli

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = REPO / "examples" / "payload.json"


def test_readme_uses_the_shipped_example_payload() -> None:
    """The README's emit and validate lines name examples/payload.json, which exists."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "emit drift.detected examples/payload.json" in readme
    assert "validate examples/payload.json --type drift.detected" in readme
    assert PAYLOAD.is_file()


def test_example_payload_validates(run_cli: RunCli) -> None:
    """`poetctl validate examples/payload.json --type drift.detected` exits 0."""
    p = run_cli("validate", PAYLOAD, "--type", "drift.detected")
    assert p.returncode == 0, p.stderr


def test_example_payload_emits(run_cli: RunCli, sp: Path) -> None:
    """The README's emit line commits the example payload with its correlation id."""
    p = run_cli("--spool", sp, "emit", "drift.detected", PAYLOAD, "--correlation-id", "drift-alert-123")
    assert p.returncode == 0, p.stderr
    event_id = p.stdout.strip()
    stored = json.loads((sp / "events" / "pending" / f"{event_id}.json").read_text())
    assert stored["correlation_id"] == "drift-alert-123"
    assert stored["payload"] == json.loads(PAYLOAD.read_text())


def test_readme_cites_no_missing_document() -> None:
    """The README cites no DESIGN.md section: that file is not in this repository."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "DESIGN.md" not in readme or (REPO / "DESIGN.md").is_file()
