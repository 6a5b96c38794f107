"""The typer-free routes of `status`, `tail` and `correlate` must behave exactly like the typer commands."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import emit_sample_chain

from poetctl.cli.fastpath import parse_reader

HEAVY = ("typer", "click", "rich", "jsonschema", "jsonschema_rs")


@pytest.mark.parametrize(
    ("name", "argv", "expected"),
    [
        ("status", ["status"], {}),
        ("status", ["--spool", "s", "status", "--check", "--max-dead", "5"], {"check": True, "max_dead": 5}),
        ("status", ["status", "-o", "json", "--max-lag=10m"], {"output": "json", "max_lag": "10m"}),
        ("tail", ["tail", "-n", "10"], {"lines": 10}),
        ("tail", ["tail", "a/*", "-n", "3", "b/**"], {"lines": 3, "patterns": ["a/*", "b/**"]}),
        ("tail", ["tail", "--type", "a.*", "--type", "b.*"], {"types": ["a.*", "b.*"]}),
        ("tail", ["--config=c.toml", "tail", "--spool", "x"], {"root_config": "c.toml", "spool": Path("x")}),
        ("correlate", ["correlate", "c-1"], {"ident": "c-1"}),
        ("correlate", ["correlate", "c-1", "--expect", "a>b", "--within", "2h"], {"expect": "a>b", "within": "2h"}),
    ],
)
def test_parse_reader_accepts_plain_calls(name: str, argv: list[str], expected: dict[str, Any]) -> None:
    """Plain reader calls are parsed into the run function's keyword arguments."""
    got = parse_reader(name, argv)
    assert got is not None
    for k, v in expected.items():
        assert got[k] == v


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("status", ["status", "--help"]),
        ("status", ["status", "-h"]),
        ("status", ["status", "--prometheus", "x.prom"]),
        ("status", ["status", "--max-dead", "-1"]),
        ("status", ["status", "--max-dead", "five"]),
        ("status", ["status", "--check=yes"]),
        ("status", ["status", "extra"]),
        ("status", ["status", "--output"]),
        ("tail", ["tail", "-f"]),
        ("tail", ["tail", "--follow", "--count", "3"]),
        ("tail", ["tail", "-n", "-1"]),
        ("tail", ["tail", "-n10"]),
        ("tail", ["tail", "--upcast"]),
        ("tail", ["tail", "--", "-x"]),
        ("correlate", ["correlate"]),
        ("correlate", ["correlate", "a", "b"]),
        ("correlate", ["correlate", "a", "--bogus", "1"]),
        ("correlate", ["--verbose", "correlate", "a"]),
    ],
)
def test_parse_reader_leaves_everything_else_to_typer(name: str, argv: list[str]) -> None:
    """Help, follow mode, bad numbers, unknown options and wrong arity go through typer."""
    assert parse_reader(name, argv) is None


@pytest.mark.parametrize(
    ("command", "runner"),
    [
        ("poetctl.cli.status:status_cmd", "poetctl.cli.status_run:status"),
        ("poetctl.cli.tail:tail_cmd", "poetctl.cli.tail_run:tail"),
        ("poetctl.cli.correlate:correlate_cmd", "poetctl.cli.correlate_run:correlate"),
    ],
)
def test_run_functions_take_the_typer_commands_parameters(command: str, runner: str) -> None:
    """Each run function has the typer command's parameters, in order, with the same defaults."""
    import importlib

    def sig(ref: str) -> list[tuple[str, Any]]:
        mod, attr = ref.split(":")
        fn = getattr(importlib.import_module(mod), attr)
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    assert sig(command) == sig(runner)


def _env(fast: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET")}
    if not fast:
        env["POETCTL_NO_FASTPATH"] = "1"
    return env


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A spool with a small causation chain in pending/ (ids known)."""
    root = tmp_path_factory.mktemp("readers") / "spool"
    first = emit_sample_chain(root)
    return root, first


CASES: dict[str, list[str]] = {
    "status_json": ["status", "-o", "json"],
    "status_check": ["status", "--check", "--warn-lag", "1h", "--max-lag", "2h", "--max-dead", "0"],
    "status_check_bad_duration": ["status", "--check", "--max-lag", "soon"],
    "status_bad_mode": ["status", "--mode", "carrier-pigeon"],
    "tail_all": ["tail", "-n", "10"],
    "tail_pattern": ["tail", "poet/system/*", "-n", "1", "-o", "jsonl"],
    "tail_type_json": ["tail", "--type", "drift.*", "--type", "alert.*", "-o", "json"],
    "tail_nothing": ["tail", "--source", "nobody"],
    "tail_bad_state": ["tail", "--state", "limbo"],
    "tail_bad_since": ["tail", "--since", "yesterday-ish"],
    "tail_bad_pattern": ["tail", "a//b"],
    "correlate_json": ["correlate", "FIRST", "-o", "json"],
    "correlate_by_correlation": ["correlate", "corr-1", "-o", "jsonl"],
    "correlate_unknown": ["correlate", "no-such-id"],
    "correlate_expect_ok": ["correlate", "corr-1", "--expect", "drift.*>alert.*", "-o", "jsonl"],
    "correlate_expect_fails": ["correlate", "corr-1", "--expect", "drift.*>feedback.*", "-o", "jsonl"],
    "correlate_within_alone": ["correlate", "corr-1", "--within", "2h"],
    "no_spool": ["status", "-o", "json"],
}


def _volatile(doc: Any) -> Any:
    """A status document without the figures that change between two runs (ages, rates)."""
    if isinstance(doc, dict):
        return {
            k: _volatile(v)
            for k, v in doc.items()
            if k != "at" and "age" not in k and "lag" not in k and "rate" not in k
        }
    if isinstance(doc, list):
        return [_volatile(v) for v in doc]
    return doc


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_and_typer_routes_agree(tmp_path: Path, spool: tuple[Path, str], case: str) -> None:
    """Exit code, stdout and stderr are the same with and without the fast path."""
    root, first = spool
    where = tmp_path / "missing" if case == "no_spool" else root
    args = [a.replace("FIRST", first) for a in CASES[case]]
    results = []
    for fast in (True, False):
        r = subprocess.run(
            [sys.executable, "-m", "poetctl", "--spool", str(where), *args],
            cwd=tmp_path,
            env=_env(fast),
            capture_output=True,
            timeout=120,
        )
        out: Any = r.stdout.decode()
        if case == "status_json":
            out = _volatile(json.loads(out))
        elif case == "status_check":
            out = out.split(" - ")[0]
        results.append((r.returncode, out, r.stderr.decode()))
    assert results[0] == results[1]
    expected_codes = {
        "tail_nothing": 1,
        "correlate_unknown": 1,
        "correlate_expect_fails": 1,
        "tail_bad_state": 2,
        "tail_bad_since": 2,
        "tail_bad_pattern": 2,
        "correlate_within_alone": 2,
        "status_check_bad_duration": 2,
        "status_bad_mode": 2,
        "no_spool": 66,
    }
    assert results[0][0] == expected_codes.get(case, 0), results[0]
    if case.startswith(("tail_all", "tail_pattern", "correlate_json", "correlate_by")):
        assert results[0][1].strip()


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--check"],
        ["status", "-o", "json"],
        ["tail", "-n", "10"],
        ["tail", "-n", "10", "-o", "json"],
        ["correlate", "corr-1"],
        ["correlate", "corr-1", "-o", "json"],
        ["correlate", "no-such-id"],
        ["emit", "system.health", "-"],
    ],
)
def test_plain_calls_import_no_typer_or_rich(tmp_path: Path, spool: tuple[Path, str], args: list[str]) -> None:
    """Plain typed and scripted commands never import typer, click or rich; the readers not orjson or dataclasses."""
    root, _ = spool
    if args[0] == "emit":
        root = tmp_path / "emit-spool"
        subprocess.run([sys.executable, "-m", "poetctl", "--spool", str(root), "init"], env=_env(True), check=True)
    probe = (
        "import sys\n"
        "from poetctl.cli import main\n"
        f"sys.argv = ['poetctl', '--spool', {str(root)!r}, *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('\\nLOADED ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=_env(True),
        input=b'{"service": "x", "status": "healthy"}',
        capture_output=True,
        timeout=120,
    )
    modules = set(r.stderr.decode().rsplit("LOADED ", 1)[1].split())
    loaded = {m.split(".")[0] for m in modules}
    assert "poetctl" in loaded
    # The readers read and print a few documents with the standard json (poetctl.stdjson), and
    # their classes are written out: orjson's import (dataclasses, inspect, uuid, platform),
    # dataclasses' and OpenSSL's (hashlib) each cost more than their work.
    heavy = {"typer", "click", "rich"} if args[0] == "emit" else {*HEAVY, "orjson", "dataclasses", "hashlib"}
    assert not loaded & heavy, sorted(loaded & heavy)
    if args[0] == "emit":  # the consumer's side of the spool is not emit's business
        assert not {"poetctl.backends.fs.claims", "poetctl.daemon"} & modules


def test_processed_count_is_exact_with_other_states(tmp_path: Path) -> None:
    """status's processed count (all rows less the other states) equals a filtered count, dead rows included."""
    from poetctl.backends.fs.index import Index
    from poetctl.backends.fs.layout import SpoolLayout
    from poetctl.backends.fs.status import _processed_count

    layout = SpoolLayout(tmp_path / "spool")
    layout.init()
    idx = Index(layout)
    rows = [
        (f"id-{i:04d}", float(i), "t.x", "a/b", "s", None, None, state)
        for i, state in enumerate(["processed"] * 7 + ["dead"] * 3 + ["zzz"] * 2)
    ]
    idx.put(rows)
    try:
        (expected,) = idx.db.execute("SELECT count(*) FROM events WHERE state='processed'").fetchone()
        assert expected == 7
        assert _processed_count(idx.db) == 7
    finally:
        idx.close()
