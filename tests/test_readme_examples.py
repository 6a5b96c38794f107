"""The README's everyday commands run as written against the shipped examples/ files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
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


def _readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def _fenced(after_heading: str, lang: str) -> str:
    """The first ```lang block after the heading line ``after_heading``."""
    text = _readme()
    start = text.index(after_heading)
    open_at = text.index(f"```{lang}\n", start) + len(lang) + 4
    return text[open_at : text.index("\n```", open_at) + 1]


def test_readme_poet_toml_example_loads(run_cli: RunCli, tmp_path: Path) -> None:
    """The README's poet.toml example is valid: `config show` with it exits 0 and shows its values."""
    cfg = tmp_path / "poet.toml"
    cfg.write_text(_fenced("## Configuration: poet.toml", "toml"), encoding="utf-8")
    p = run_cli("--config", cfg, "config", "show")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["daemon"]["max_causation_depth"] == 64 and shown["origins"]["daemon.max_causation_depth"] == "file"
    assert shown["status"]["min_daemons"] == 1 and shown["builtin_handlers"]["performance_degraded"] is False


def test_readme_inline_json_emit(run_cli: RunCli, sp: Path) -> None:
    """The README's `emit system.health '{...}'` line commits the inline object as the payload."""
    inline = '{"service":"trainer","status":"healthy"}'
    assert f"poetctl emit system.health '{inline}'" in _readme()
    p = run_cli("--spool", sp, "emit", "system.health", inline)
    assert p.returncode == 0, p.stderr
    stored = json.loads((sp / "events" / "pending" / f"{p.stdout.strip()}.json").read_text())
    assert stored["payload"] == json.loads(inline)


def test_readme_emit_needs_a_spool_or_init(run_cli: RunCli, tmp_path: Path) -> None:
    """As the README says, emit into a missing spool exits 66 and creates nothing; --init creates it."""
    missing = tmp_path / "nope"
    p = run_cli("--spool", missing, "emit", "system.health", '{"service":"t","status":"healthy"}')
    assert p.returncode == 66 and not missing.exists(), p.stderr
    p = run_cli("--spool", missing, "emit", "--init", "system.health", '{"service":"t","status":"healthy"}')
    assert p.returncode == 0 and (missing / "events" / "pending" / f"{p.stdout.strip()}.json").is_file(), p.stderr


def test_readme_exit_code_table_lists_every_code() -> None:
    """Every exit code poetctl.errors defines has a row in the README's exit-code table."""
    from poetctl import errors

    table = _readme().split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    codes = {str(v) for k, v in vars(errors).items() if k.startswith("EX_") and isinstance(v, int)}
    assert codes <= rows, codes - rows


def test_readme_testing_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Testing your handlers" example passes as written, and writes nothing to disk."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(_fenced("### Testing your handlers", "python"), "README.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    for test in tests:
        test()
    assert os.listdir(tmp_path) == []
