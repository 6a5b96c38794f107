"""Terminal safety of everything printed for humans: control characters, bidi overrides and rich markup
from the spool (event fields, handler errors, file names, heartbeats, state files) never reach the
terminal as such; NO_COLOR means no SGR codes at all; JSON output stays exact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv, load_samples
from daemon_helpers.harness import run_once, write_config
from terminal import run_on_tty

from poetctl import EventRouter
from poetctl.event import Event
from poetctl.ids import uuid7

SAMPLES = load_samples()
# Sets the window title, rings the bell, clears the screen, a C1 CSI, a right-to-left override,
# DEL, a carriage return (overwrites the line), rich markup, an OSC 8 link and an emoji code.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\x7f\rX[bold red]x[/][link=http://e.vil]y[/link]:smile:"
MARKUP = "[bold red]x[/][link=http://e.vil]y[/link]:smile:"
# What must never be in the bytes a terminal receives (after removing the SGR codes of real styles).
FORBIDDEN = [b"\x1b", b"\x07", b"\x7f", b"\r", "\x9b".encode(), "\u202e".encode(), "\u2066".encode()]
SGR = re.compile(rb"\x1b\[[0-9;]*m")
CORR = "hc-\x1b[2J-\u202e"
FN = "detect_drift"


def unsafe(data: bytes | str, *, styled: bool = False) -> list[bytes]:
    """The forbidden sequences in ``data`` (SGR style codes removed first when ``styled``)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if styled:
        raw = SGR.sub(b"", raw)
    return [f for f in FORBIDDEN if f in raw]


def seal_into(directory: Path, **fields: object) -> str:
    """Write a hand-made event (any field values, valid checksum) into ``directory``; its id."""
    d: dict[str, object] = {
        "id": uuid7(),
        "type": "system.health",
        "source": "test",
        "timestamp": time.time(),
        "topic": "poet/system/health",
        "metadata": {"version": "1.0", "environment": "dev", "service": "poet"},
        "payload": {"service": "x", "status": "healthy"},
    }
    d.update(fields)
    ev = Event.from_dict(d).seal()
    (directory / f"{ev.id}.json").write_bytes(ev.to_json())
    return ev.id


@dataclass
class Hostile:
    cwd: Path
    spool: Path
    dead_id: str
    ids: list[str]


HANDLER = f"""
def register(router):
    def fail(event):
        raise RuntimeError({HOSTILE!r})
    router.subscribe("system.metrics", fail, name="fails")
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    """A spool where every field a read command shows carries control characters and markup."""
    cwd = tmp_path_factory.mktemp("hostile")
    spool = cwd / "spool"
    router = EventRouter(spool=spool)
    # A real dead letter: a handler whose error text is hostile, one attempt.
    dead_id = router.emit("system.metrics", SAMPLES["system.metrics"]["valid"][0], source="s" + HOSTILE)
    (cwd / "h.py").write_text(HANDLER)
    r = run_once(cwd, spool, write_config(cwd, max_attempts=1), handlers=[cwd / "h.py"])
    assert r.returncode == 1, r.stderr  # 1: something was dead-lettered
    assert (spool / "events" / "dead" / f"{dead_id}.json").exists()
    # Hand-made events (valid checksums) with hostile type, topic, source, correlation and cause.
    processed = spool / "events" / "processed"
    a = seal_into(processed, type="t" + HOSTILE, topic="poet/" + HOSTILE, source=HOSTILE, correlation_id=CORR)
    b = seal_into(processed, correlation_id=CORR, causation_id="cause-" + HOSTILE)
    c = seal_into(spool / "events" / "pending", correlation_id=CORR, causation_id=a, source=HOSTILE)
    # A file whose very name is hostile (fsck and tail report it), and a hostile heartbeat and state.
    (spool / "events" / "pending" / ("n\x1b]0;t\x07\u202e.json")).write_bytes(b"{}")
    beat = {"pid": 1, "owner": HOSTILE, "last_beat": time.time(), "started_at": time.time() - 10}
    beat |= {"counts": {"processed": HOSTILE}, "inflight": HOSTILE, "lag_seconds": HOSTILE}
    (spool / "run" / "daemons").mkdir(exist_ok=True)
    (spool / "run" / "daemons" / "h.1.2.json").write_bytes(json.dumps(beat).encode())
    hist = spool / "state" / FN / "history"
    hist.mkdir(parents=True)
    state = {"function_name": FN, "version": "v" + HOSTILE, "previous_version": HOSTILE, "updated_at": time.time()}
    state |= {"reason": HOSTILE, "event_id": HOSTILE}
    (spool / "state" / FN / "current.json").write_bytes(json.dumps(state).encode())
    (hist / "v1.json").write_bytes(json.dumps(state).encode())
    # A schema directory whose name carries an escape (`schemas` lists each schema's path).
    schemas = cwd / "sch\x1b[2J\u202e"
    schemas.mkdir()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}
    (schemas / "custom.thing.json").write_text(json.dumps(schema))
    with (cwd / "poet.toml").open("a") as toml:
        toml.write('[event_schemas]\npaths = ["sch\\u001b[2J\\u202e"]\n')
    return Hostile(cwd, spool, dead_id, [a, b, c])


def pipe(h: Hostile, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cli_argv("--spool", h.spool, *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=clean_env({"COLUMNS": "250", **(env or {})}),
        cwd=h.cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )


# Every command that prints a table or tree, with the output option that gives one in a pipe
# (None: the command has no other form).
TABLES = [
    ("tail", "-n", "50", "-o", "table"),
    ("tail", "-n", "50", "--correlation-id", CORR, "-o", "table"),
    ("correlate", CORR, "-o", "tree"),
    ("correlate", CORR, "-o", "dot"),
    ("correlate", CORR, "-o", "mermaid"),
    ("status", "-o", "table"),
    ("status", "--check"),
    ("dead", "list", "-o", "table"),
    ("state", "show", FN, "-o", "table"),
    ("state", "list", "-o", "table"),
    ("fsck", "-o", "table"),
    ("schemas", "-o", "table"),
]


@pytest.mark.parametrize("args", TABLES, ids=lambda a: " ".join(x for x in a if x.isprintable()))
def test_tables_in_a_pipe_carry_no_control_characters(hostile: Hostile, args: tuple[str, ...]) -> None:
    """Every table and tree (and its stderr) escapes control characters from the spool; markup prints literally."""
    r = pipe(hostile, *args)
    assert r.returncode in (0, 1, 2), r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()
    assert r.stdout.strip()
    assert unsafe(r.stdout) == [], r.stdout
    assert unsafe(r.stderr) == [], r.stderr


@pytest.mark.parametrize(
    "args",
    [a for a in TABLES if "-o" in a and a[a.index("-o") + 1] == "table"]
    + [("correlate", CORR), ("dead", "list"), ("tail", "-n", "50")],
    ids=lambda a: " ".join(x for x in a if x.isprintable()),
)
def test_tables_on_a_terminal_carry_only_style_codes(hostile: Hostile, args: tuple[str, ...]) -> None:
    """On a TTY (rich tables, in colour), the only escape sequences are SGR styles; values show escaped."""
    code, out, err = run_on_tty(hostile.cwd, "--spool", hostile.spool, *args)
    assert code in (0, 1, 2), err
    assert unsafe(out, styled=True) == [], out
    assert unsafe(err) == [], err


def test_escaped_values_are_visible_and_markup_literal(hostile: Hostile) -> None:
    """The hostile text shows as visible escapes (\\x1b, \\u202e) and its rich markup as typed, in tables."""
    r = pipe(hostile, "dead", "list", "-o", "table")
    assert "RuntimeError: \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202eevil\\x7f" in r.stdout.decode()
    r = pipe(hostile, "state", "show", FN, "-o", "table")
    assert "[bold red]x[/]" in r.stdout.decode() and "\\x1b]0;pwned" in r.stdout.decode()
    r = pipe(hostile, "correlate", CORR, "-o", "tree")
    assert "(cause cause-\\x1b]0;pwned\\x07" in r.stdout.decode()


def test_follow_table_escapes_control_characters(hostile: Hostile) -> None:
    """`tail -f -o table` (the streaming table) escapes the values of each line too."""
    r = pipe(hostile, "tail", "-f", "-n", "50", "-o", "table", "--count", "3", "--correlation-id", CORR)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4  # header + 3 events
    assert unsafe(r.stdout) == [] and unsafe(r.stderr) == []
    assert b"\\x1b]0;pwned" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("tail", "-n", "50", "-o", "jsonl"),
        ("tail", "-n", "50", "-o", "json"),
        ("dead", "list", "-o", "jsonl"),
        ("correlate", CORR, "-o", "jsonl"),
    ],
    ids=lambda a: " ".join(a),
)
def test_json_output_stays_exact(hostile: Hostile, args: tuple[str, ...]) -> None:
    """JSON and JSON lines carry the stored values unchanged (control characters as JSON escapes)."""
    r = pipe(hostile, *args)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    docs = [json.loads(text)] if args[-1] == "json" else [json.loads(x) for x in text.splitlines()]
    blob = json.dumps(docs, ensure_ascii=False)
    assert HOSTILE in blob or json.dumps(HOSTILE, ensure_ascii=False)[1:-1] in blob


def test_jsonl_round_trips_the_hostile_envelope_byte_for_byte(hostile: Hostile) -> None:
    """tail -o jsonl prints each stored file exactly (checksum included), hostile values and all."""
    a = hostile.ids[0]
    r = pipe(hostile, "tail", "-n", "50", "-o", "jsonl")
    stored = (hostile.spool / "events" / "processed" / f"{a}.json").read_bytes()
    assert stored in r.stdout.splitlines()


# -- NO_COLOR ------------------------------------------------------------------------------------

COLOURED = [
    ("status",),
    ("dead", "list"),
    ("tail", "-n", "5"),
    ("state", "show", FN),
    ("state", "list"),
    ("fsck",),
    ("schemas",),
    ("--help",),
    ("tail", "--help"),
]


@pytest.mark.parametrize("args", COLOURED, ids=lambda a: " ".join(a))
def test_no_color_means_no_sgr_codes_at_all(hostile: Hostile, args: tuple[str, ...]) -> None:
    """With NO_COLOR set and a real terminal, no SGR sequence (no bold, no italic) is printed at all."""
    code, out, err = run_on_tty(hostile.cwd, "--spool", hostile.spool, *args, env={"NO_COLOR": "1"})
    assert code in (0, 1), err
    assert out.strip()
    assert "\x1b" not in out, repr(out[:300])


def test_without_no_color_the_terminal_gets_styles(hostile: Hostile) -> None:
    """Control for the NO_COLOR test: the same terminal without NO_COLOR does get SGR codes."""
    code, out, _ = run_on_tty(hostile.cwd, "--spool", hostile.spool, "status")
    assert code == 0 and SGR.search(out.encode())


def test_stderr_diagnostics_escape_file_names(hostile: Hostile) -> None:
    """A warning naming a hostile file (skipped damaged file ...) escapes its control characters."""
    r = pipe(hostile, "tail", "-n", "50", "-o", "jsonl")
    err = r.stderr.decode()
    assert "skipped damaged file" in err and "n\\x1b]0;t\\x07\\u202e.json" in err
    assert unsafe(r.stderr) == []
    assert os.path.exists(hostile.spool / "events" / "pending" / "n\x1b]0;t\x07\u202e.json")
