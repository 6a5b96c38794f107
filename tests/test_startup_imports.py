"""The four commands people type and script import only what they need, as whole `python -m poetctl` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import emit_sample_chain
from daemon_helpers.harness import clean_env, run_once, write_config

# Never on these paths: each costs more start-up than the command's work (see bench/startup.py).
# urllib.parse (and ipaddress): pathlib's only use is Path.as_uri; sqlite3 (the wrapper, with datetime):
# the readers use _sqlite3; datetime: times are shown with time.gmtime.
ALWAYS_OUT = {
    "typer", "click", "rich", "typing", "jsonschema", "jsonschema_rs", "orjson", "dataclasses",
    "urllib.parse", "ipaddress", "ctypes", "random", "hashlib", "inspect", "argparse", "uuid",
}  # fmt: skip
READERS_OUT = ALWAYS_OUT | {"sqlite3", "sqlite3.dbapi2", "datetime"}


@pytest.fixture(scope="module")
def handled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A spool whose events a daemon has handled (so the readers go through the index), and a scratch dir."""
    tmp = tmp_path_factory.mktemp("startup")
    sp = tmp / "spool"
    first = emit_sample_chain(sp)
    r = run_once(tmp, sp, write_config(tmp), env={"EFFECTS_FILE": str(tmp / "effects.txt")})
    assert r.returncode == 0, r.stderr
    assert (sp / "index" / "events.sqlite").is_file()
    away = tmp / "away"  # no poet.toml here: reading one imports tomllib (with typing and datetime)
    away.mkdir()
    return away, sp, first


def imported(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m poetctl ARGS``; its result and every module the process imported."""
    env = clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte-code caches on
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "poetctl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return r, modules - {"module"}  # the header line's last column


@pytest.mark.parametrize("command", ["status", "tail", "correlate"])
def test_readers_import_no_sqlite3_wrapper_datetime_or_urllib(handled: tuple[Path, Path, str], command: str) -> None:
    """status, tail -n 10 and correlate on an indexed spool: exit 0, output, and none of the costly modules."""
    tmp, sp, first = handled
    args = {"status": ["status"], "tail": ["tail", "-n", "10"], "correlate": ["correlate", first]}[command]
    r, modules = imported(tmp, "--spool", os.fspath(sp), *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
    assert "poetctl.backends.fs.index" in modules and "_sqlite3" in modules  # it did read the index
    assert not modules & READERS_OUT, sorted(modules & READERS_OUT)


def test_one_event_emit_imports_none_of_the_costly_modules(handled: tuple[Path, Path, str]) -> None:
    """A one-event emit stores its event without urllib.parse, sqlite3, typing, orjson and the rest."""
    tmp, _, _ = handled
    sp = tmp / "emit-spool"
    subprocess.run([sys.executable, "-m", "poetctl", "--spool", sp, "init"], env=clean_env(), check=True, timeout=120)
    payload = '{"service": "x", "status": "healthy"}'
    r, modules = imported(tmp, "--spool", os.fspath(sp), "emit", "system.health", payload)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in (sp / "events" / "pending").iterdir()] == [r.stdout.strip() + ".json"]
    out = ALWAYS_OUT | {"sqlite3", "_sqlite3", "datetime", "threading", "poetctl.daemon"}
    assert not modules & out, sorted(modules & out)


def test_pathlib_without_urllib_still_makes_uris(tmp_path: Path) -> None:
    """After the CLI's pathlib import, Path.as_uri works and a later urllib.parse import is the real module."""
    code = (
        "import sys\n"
        "from poetctl.cli import import_pathlib\n"
        "import_pathlib()\n"
        "assert 'urllib.parse' not in sys.modules, 'urllib.parse imported'\n"
        "from pathlib import Path\n"
        "print(Path('/tmp/a b/%é').as_uri())\n"
        "import urllib.parse\n"
        "print(urllib.parse.quote('a b'), urllib.parse.urlsplit('http://[::1]:80/x').port)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["file:///tmp/a%20b/%25%C3%A9", "a%20b", "80"]


def test_index_uri_quotes_as_urllib_does() -> None:
    """The read-only index URI quotes a path exactly as urllib.parse.quote, and bytes that are not UTF-8 too."""
    from urllib.parse import quote

    from poetctl.backends.fs.index import uri_path

    for p in ["/tmp/a b/c%d?e#f&g=h;i", "/x/é✓𝄞", "rel/~_.-/+:@$,!*'()[]", "/"]:
        assert uri_path(p) == quote(p)
    assert uri_path(os.fsdecode(b"/tmp/\xff")) == "/tmp/%FF"
