"""Shared fixtures: a fresh spool, a router on it, the sample payloads, and a CLI runner.

The CLI always runs as a real subprocess (``python -m poetctl``) with every
``POET_*`` variable removed from its environment and ``cwd=tmp_path``, so no
stray ``poet.toml`` or spool of the developer's is ever read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import harness
from daemon_helpers.harness import Daemons

from poetctl import EventRouter
from poetctl.spool import SpoolLayout

SAMPLES_DIR = Path(__file__).parent / "samples"
CLI_TIMEOUT = 120


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without any POET_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    env.pop("NO_COLOR", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def cli_argv(*args: str | os.PathLike[str]) -> list[str]:
    """argv for ``python -m poetctl ARGS``."""
    return [sys.executable, "-m", "poetctl", *(os.fspath(a) for a in args)]


def load_samples() -> dict[str, dict[str, Any]]:
    """tests/samples/<type>.json as {type: {"valid": [...], "invalid": [{"why", "payload"}]}}."""
    out = {}
    for p in sorted(SAMPLES_DIR.glob("*.json")):
        out[p.name[: -len(".json")]] = json.loads(p.read_text(encoding="utf-8"))
    return out


def emit_sample_chain(spool: Path) -> str:
    """Emit a small causation chain (drift.detected -> alert.create_external, ``corr-1``) and a system.health
    into ``spool``; the drift event's id (the chain's root)."""
    from poetctl.router import EventRouter

    s = {t: d["valid"][0] for t, d in load_samples().items()}
    router = EventRouter(spool=spool)
    first = router.emit("drift.detected", s["drift.detected"], correlation_id="corr-1")
    router.emit("alert.create_external", s["alert.create_external"], correlation_id="corr-1", causation_id=first)
    router.emit("system.health", {"service": "x", "status": "healthy"})
    router.close()
    return first


def files_in(directory: Path) -> list[Path]:
    """Every regular file or symlink directly in ``directory`` (sorted)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() or p.is_symlink())


def all_event_files(spool: Path) -> list[Path]:
    """Every file anywhere under ``spool/events`` except ``events/tmp``."""
    events = spool / "events"
    out = []
    for dirpath, _dirs, names in os.walk(events):
        if Path(dirpath) == events / "tmp":
            continue
        out.extend(Path(dirpath) / n for n in names)
    return sorted(out)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """An initialised, empty spool directory under tmp_path."""
    root = tmp_path / "spool"
    SpoolLayout(root).init()
    return root


@pytest.fixture
def router(spool: Path) -> EventRouter:
    """An EventRouter writing into the ``spool`` fixture."""
    return EventRouter(spool=spool)


@pytest.fixture(scope="session")
def samples() -> dict[str, dict[str, Any]]:
    """All sample payloads, keyed by event type."""
    return load_samples()


RunCli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """Run ``python -m poetctl *args`` in tmp_path; stdout/stderr come back decoded as text.

    ``input`` may be str or bytes (sent as is); ``env`` entries are added to a
    POET_*-free copy of the environment; ``preexec_fn`` is passed through.
    """

    def run(
        *args: str | os.PathLike[str],
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(
            cli_argv(*args),
            input=data,
            stdin=subprocess.DEVNULL if data is None else None,
            capture_output=True,
            env=clean_env(env),
            cwd=cwd or tmp_path,
            timeout=CLI_TIMEOUT,
            preexec_fn=preexec_fn,
            check=False,
        )
        proc.stdout = proc.stdout.decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc

    return run


@pytest.fixture
def sp(spool: Path) -> Path:
    """The ``spool`` fixture under its short name: one fixture, the same directory (not a second copy)."""
    return spool


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """A factory of daemon processes; any still running are SIGKILLed when the test ends."""
    pool = Daemons(tmp_path)
    try:
        yield pool
    finally:
        pool.cleanup()


# -- daemon modes ---------------------------------------------------------------------------------
# A daemon test marked ``@pytest.mark.daemon_modes("inline", ...)`` runs once as written ("default")
# and once per named mode, with that mode's [daemon] settings in every config it writes. Inline mode
# (one worker, on the main thread) and the always-on mover are different code paths that the same
# behaviours must hold on; the tests stay in one place instead of being imported by other modules.
DAEMON_MODES: dict[str, dict[str, Any]] = {
    "inline": {"workers": 1},
    "mover": {"mover_backlog": 0, "workers": 4},
    "mover_inline": {"mover_backlog": 0, "workers": 1},
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "daemon_modes(*modes): also run the test in these modes (DAEMON_MODES)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("daemon_modes")
    if marker is not None:
        unknown = [m for m in marker.args if m not in DAEMON_MODES]
        assert not unknown, f"unknown daemon modes {unknown}; expected some of {sorted(DAEMON_MODES)}"
        metafunc.parametrize("daemon_mode", ["default", *marker.args], indirect=True)


@pytest.fixture(autouse=True)
def daemon_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The daemon mode this test runs in ("default" unless it is marked daemon_modes)."""
    mode: str = getattr(request, "param", "default")
    if mode != "default":
        monkeypatch.setattr(harness, "MODE_OVERRIDES", DAEMON_MODES[mode])
    return mode
