"""Shared tooling for the daemon tests: real ``poetctl daemon`` processes on real spools.

Not a handler module (it has no ``register``). The test files import it as
``daemon_helpers.harness``; the handler modules beside it are passed to the
daemon with ``--handlers tests/daemon_helpers/<name>.py``.

Every daemon runs as ``python -m poetctl`` in a subprocess with no ``POET_*``
variable in its environment, ``cwd`` set to the test's tmp_path, the spool and
a poet.toml passed explicitly, and the built-in handlers off.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from poetctl import EventRouter

HELPERS = Path(__file__).resolve().parent
SAMPLES = HELPERS.parent / "samples"
NOOP = HELPERS / "noop.py"
EFFECTS = HELPERS / "effects.py"
NO_REGISTER = HELPERS / "no_register.py"

# Generous: these only bound how long a broken daemon can hang a test.
DEADLINE = 120.0
# A handler sleep (SLEEP_S, SECOND_SLEEP_S) that no test outlives: the handler is still
# running whenever the test looks, however slow the machine. Tests SIGKILL such daemons.
FOREVER_S = str(DEADLINE * 10)
EMIT_CHUNK = 2000  # events per emit_many group commit

FAST = {
    "backoff_base": 0.05,
    "backoff_cap": 0.2,
    "max_attempts": 3,
    "rescan_interval": 0.5,
    "heartbeat_interval": 0.5,
}


# -- environment and configuration ----------------------------------------------------
def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without POET_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for k in ("EFFECTS_FILE", "FAIL_IDS_FILE", "SLEEP_S", "EFFECT_TYPES", "FOLLOWUP", "SECOND_SLEEP_S", "STARTED_FILE"):
        env.pop(k, None)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


# Set by the ``daemon_mode`` fixture (tests/conftest.py) while a test runs in another daemon mode:
# these [daemon] settings win over the test's own (workers = 1 for inline, mover_backlog = 0...).
MODE_OVERRIDES: dict[str, Any] = {}


def write_config(directory: Path, name: str = "poet.toml", **daemon: Any) -> Path:
    """A poet.toml with a ``[daemon]`` table: :data:`FAST` overridden by ``daemon``, then by :data:`MODE_OVERRIDES`."""
    table = {**FAST, **daemon, **MODE_OVERRIDES}
    path = directory / name
    path.write_text("[daemon]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items()))
    return path


def config_of(config: Path) -> dict[str, Any]:
    """The effective ``[daemon]`` table of a poet.toml written by :func:`write_config`."""
    table: dict[str, Any] = tomllib.loads(config.read_text())["daemon"]
    return {"workers": 4, **table}  # 4: the daemon's default (DaemonOptions.workers)


def argv(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "poetctl", *(os.fspath(a) for a in args)]


def daemon_args(spool: Path, config: Path, handlers: Iterable[Path] = (EFFECTS,), once: bool = False) -> list[str]:
    out = ["daemon", "--no-builtin-handlers", "--spool", str(spool), "--config", str(config)]
    for h in handlers:
        out += ["--handlers", str(h)]
    if once:
        out.append("--once")
    return out


# -- processes ------------------------------------------------------------------
class DaemonProc:
    """One running ``poetctl daemon`` with its stderr captured to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> int:
        """SIGKILL and reap (a zombie would still look alive in /proc)."""
        self.signal(signal.SIGKILL)
        return self.popen.wait(timeout=DEADLINE)

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon {self.pid} did not exit within {timeout}s; log:\n{self.stderr()}") from None

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM (graceful) and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Daemons:
    """Starts daemons for one test; :meth:`cleanup` SIGKILLs whatever is left (call it at teardown)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[DaemonProc] = []

    def start(
        self,
        spool: Path,
        config: Path,
        handlers: Iterable[Path] = (EFFECTS,),
        env: Mapping[str, str] | None = None,
        once: bool = False,
    ) -> DaemonProc:
        log = self.tmp_path / f"daemon-{len(self.procs)}.log"
        with open(log, "wb") as err:
            p = subprocess.Popen(
                argv(*daemon_args(spool, config, handlers, once)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=clean_env(env),
                cwd=self.tmp_path,
            )
        d = DaemonProc(p, log)
        self.procs.append(d)
        return d

    def cleanup(self) -> None:
        for d in self.procs:
            if d.alive():
                d.kill()


def run_cli(
    cwd: Path, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m poetctl ARGS`` to completion; text stdout/stderr."""
    return subprocess.run(
        argv(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def run_once(
    cwd: Path, spool: Path, config: Path, handlers: Iterable[Path] = (EFFECTS,), env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``poetctl daemon --once`` to completion."""
    return run_cli(cwd, *daemon_args(spool, config, handlers, once=True), env=env)


def status(cwd: Path, spool: Path) -> dict[str, Any]:
    """``poetctl status -o json`` parsed."""
    r = run_cli(cwd, "status", "-o", "json", "--spool", spool)
    assert r.returncode == 0, f"status failed ({r.returncode}): {r.stderr}"
    return json.loads(r.stdout)


def wait_for(
    cond: Callable[[], Any],
    what: str,
    timeout: float = DEADLINE,
    interval: float = 0.05,
    procs: Iterable[DaemonProc] = (),
) -> Any:
    """Poll ``cond`` until truthy; fail naming ``what`` if the deadline passes or a daemon dies."""
    deadline = time.monotonic() + timeout
    procs = list(procs)
    while True:
        v = cond()
        if v:
            return v
        for p in procs:
            if not p.alive():
                raise AssertionError(
                    f"daemon {p.pid} exited ({p.popen.returncode}) while waiting for {what}; log:\n{p.stderr()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- spool inspection -------------------------------------------------------------
def events_dir(spool: Path, state: str) -> Path:
    return spool / "events" / state


def names(directory: Path) -> set[str]:
    """File names directly in ``directory`` (empty if it does not exist)."""
    try:
        with os.scandir(directory) as it:
            return {e.name for e in it}
    except FileNotFoundError:
        return set()


def ids_in(spool: Path, state: str) -> set[str]:
    """Event ids (``<id>.json`` files, no hidden ones) in ``events/<state>``."""
    return {n[:-5] for n in names(events_dir(spool, state)) if n.endswith(".json") and not n.startswith(".")}


def count_json(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def inflight_files(spool: Path) -> dict[str, set[str]]:
    """``{owner: {file names}}`` under events/inflight (journals excluded)."""
    root = events_dir(spool, "inflight")
    out: dict[str, set[str]] = {}
    for owner in names(root):
        p = root / owner
        if p.is_dir():
            out[owner] = {n for n in names(p) if n.endswith(".json")}
    return out


def inflight_ids(spool: Path) -> set[str]:
    return {n[:-5] for files in inflight_files(spool).values() for n in files}


def owner_dir(spool: Path, pid: int) -> Path | None:
    """The inflight directory of the daemon with ``pid`` (owner ``<host>.<pid>.<ticks>``)."""
    for owner in names(events_dir(spool, "inflight")):
        parts = owner.split(".")
        if len(parts) >= 3 and parts[-2] == str(pid):
            return events_dir(spool, "inflight") / owner
    return None


def heartbeat_of(spool: Path, pid: int) -> Path | None:
    """``run/daemons/<owner>.json`` of the daemon with ``pid``, if it has written one."""
    d = spool / "run" / "daemons"
    for n in names(d):
        parts = n[:-5].split(".") if n.endswith(".json") and not n.startswith(".") else []
        if len(parts) >= 3 and parts[-2] == str(pid):
            return d / n
    return None


def heartbeat_doc(spool: Path, pid: int) -> dict[str, Any] | None:
    """The parsed heartbeat of the daemon with ``pid`` (the daemon's own status), or None before its first."""
    path = heartbeat_of(spool, pid)
    if path is None:
        return None
    try:
        doc = read_json(path)  # written atomically (rename), so a read is never torn
    except FileNotFoundError:
        return None
    return doc if isinstance(doc, dict) else None


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def retry_due(spool: Path, event_id: str) -> bool:
    """True once the saved retry time (``records/<id>.json`` ``not_before``) of ``event_id`` has passed."""
    try:
        rec = read_json(events_dir(spool, "records") / f"{event_id}.json")
    except FileNotFoundError:
        return True  # no saved retry: nothing to wait for
    return time.time() >= float(rec.get("not_before") or 0.0)


def events_of_type(
    spool: Path, event_type: str, states: Iterable[str] = ("pending", "processed")
) -> list[dict[str, Any]]:
    """Every event envelope of ``event_type`` in the given states."""
    out = []
    for state in states:
        d = events_dir(spool, state)
        for n in names(d):
            if n.endswith(".json") and not n.startswith("."):
                ev = read_json(d / n)
                if ev.get("type") == event_type:
                    out.append(ev)
    return out


# -- effects file ---------------------------------------------------------------
class Effect:
    """One line of the effects file."""

    __slots__ = ("handler", "id", "ok", "pid", "t")

    def __init__(self, line: str) -> None:
        eid, handler, t, pid, result = line.rstrip("\n").split("\t")
        self.id, self.handler, self.t, self.pid, self.ok = eid, handler, float(t), int(pid), result == "ok"


def read_effects(path: Path) -> list[Effect]:
    """Every whole line of the effects file, in append order."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    return [Effect(ln) for ln in data.splitlines() if ln]


def ok_counts(path: Path, handler: str = "effects") -> Counter[str]:
    """Successful calls per event id of one handler."""
    return Counter(e.id for e in read_effects(path) if e.ok and e.handler == handler)


def started_ids(path: Path, handler: str = "effects") -> set[str]:
    """Event ids whose ``handler`` has started (the ``STARTED_FILE`` of effects.py)."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return set()
    return {p[0] for ln in data.splitlines() if len(p := ln.split("\t")) == 3 and p[1] == handler}


def line_count(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


# -- events ---------------------------------------------------------------------------
def _samples(event_type: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{event_type}.json").read_text())["valid"][0]


def execution_payload(function_name: str, n: int = 0) -> dict[str, Any]:
    """A valid function.execution payload whose partition key is ``function_name``."""
    p = copy.deepcopy(_samples("function.execution"))
    p["function_name"] = function_name
    p["execution_id"] = f"exec-{n}"
    return p


def metrics_payload(n: int) -> dict[str, Any]:
    return {"service": "t", "metrics": {"n": n}}


def emit_chunked(router: EventRouter, items: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """``emit_many`` in chunks (ids stay in emit order); returns every id."""
    ids: list[str] = []
    for i in range(0, len(items), EMIT_CHUNK):
        ids += router.emit_many(items[i : i + EMIT_CHUNK])
    return ids


def emit_metrics(spool: Path, n: int) -> list[str]:
    return emit_chunked(EventRouter(spool=spool), [("system.metrics", metrics_payload(i)) for i in range(n)])


def emit_executions(spool: Path, fn_names: list[str], per_name: int, grouped: bool = False) -> list[str]:
    """``per_name`` function.execution events per name: round-robin, or all of a name together."""
    if grouped:
        order = [(fn, i) for fn in fn_names for i in range(per_name)]
    else:
        order = [(fn, i) for i in range(per_name) for fn in fn_names]
    items = [("function.execution", execution_payload(fn, i)) for fn, i in order]
    return emit_chunked(EventRouter(spool=spool), items)
