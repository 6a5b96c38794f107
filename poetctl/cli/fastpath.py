"""Typer-free routes for the calls people type and script: ``emit``, ``status``, ``tail``, ``correlate``.

Shell scripts and CI call ``emit`` once per event, and monitoring calls
``status --check`` or ``correlate`` every minute, so start-up is the
product's latency there; typer alone costs more than the whole command. This
module recognises only plain forms (for ``emit``: ``TYPE``, optional
``PAYLOAD``: a file, ``-`` or an inline JSON object, the value options below;
for the readers the options in :data:`READERS`; root ``--spool``/``--config``)
and returns None for anything else (``--help``, ``--batch``, ``-f``, unknown
options, ``--``, a number typer would refuse), which then goes through typer
as usual. The work itself is the same function the typer command calls
(:func:`poetctl.cli.emitting.emit_events`, ``status_run.status``,
``tail_run.tail``, ``correlate_run.correlate``), and tests check both routes
agree and that the functions' defaults are the typer commands' defaults.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# option -> parameter of emit_events (value options only; flags are left to typer).
EMIT_OPTIONS = {
    "--source": "source",
    "--correlation-id": "correlation_id",
    "--causation-id": "causation_id",
    "--id": "event_id",
    "--id-from": "id_from",
    "--environment": "environment",
    "--schema-version": "schema_version",
    "--priority": "priority",
    "--wait": "wait",
    "--spool": "spool",
    "--config": "config",
}
ROOT_OPTIONS = ("--spool", "--config")


def parse(argv: list[str]) -> dict[str, Any] | None:
    """Options of a plain ``emit`` call, or None if typer should parse ``argv``."""
    found: dict[str, Any] = {"root_spool": None, "root_config": None}
    i = 0
    # Root options, then the command name.
    while i < len(argv) and argv[i] != "emit":
        opt, value, i = _option(argv, i)
        if opt not in ROOT_OPTIONS or value is None:
            return None
        found["root_" + opt[2:]] = value
    if i >= len(argv):
        return None
    i += 1
    positionals: list[str] = []
    while i < len(argv):
        arg = argv[i]
        if arg == "-" or not arg.startswith("-"):
            positionals.append(arg)
            i += 1
            continue
        opt, value, i = _option(argv, i)
        if opt not in EMIT_OPTIONS or value is None:
            return None
        found[EMIT_OPTIONS[opt]] = value  # the last occurrence wins, as with click
    if not 1 <= len(positionals) <= 2:
        return None
    found["event_type"] = positionals[0]
    found["payload"] = positionals[1] if len(positionals) == 2 else None
    return found


def _option(argv: list[str], i: int) -> tuple[str, str | None, int]:
    arg = argv[i]
    if "=" in arg and arg.startswith("--"):
        opt, _, value = arg.partition("=")
        return opt, value, i + 1
    if i + 1 < len(argv):
        return arg, argv[i + 1], i + 2
    return arg, None, i + 1


def run(argv: list[str]) -> int | None:
    """Run a plain ``emit`` and return its exit code, or None to let typer handle ``argv``."""
    opts = parse(argv)
    if opts is None:
        return None
    from ..config import load_config
    from ..errors import PoetError
    from .emitting import emit_events

    try:
        spool = opts.get("spool") or opts["root_spool"]
        config = opts.get("config") or opts["root_config"]
        cfg = load_config(Path(config) if config else None, Path(spool) if spool else None)
        emit_events(
            cfg,
            event_type=opts["event_type"],
            payload=opts["payload"],
            source=opts.get("source"),
            correlation_id=opts.get("correlation_id"),
            causation_id=opts.get("causation_id"),
            event_id=opts.get("event_id"),
            id_from=opts.get("id_from"),
            environment=opts.get("environment"),
            schema_version=opts.get("schema_version"),
            priority=opts.get("priority"),
            wait=opts.get("wait"),
        )
    except PoetError as exc:
        sys.stderr.write(f"poetctl: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


# Reader commands: option -> (parameter, kind). Kinds: "str"; "int" (an integer within the typer
# option's bounds, else typer reports it); "flag"; "list" (repeatable). Anything else goes to typer.
_COMMON: dict[str, tuple[str, str]] = {
    "--mode": ("mode", "str"),
    "--spool": ("spool", "path"),
    "--config": ("config", "path"),
}
READERS: dict[str, dict[str, tuple[str, str]]] = {
    "status": {
        "--check": ("check", "flag"),
        "--warn-lag": ("warn_lag", "str"),
        "--max-lag": ("max_lag", "str"),
        "--max-dead": ("max_dead", "int"),
        "--max-corrupt": ("max_corrupt", "int"),
        "--max-stale": ("max_stale", "int"),
        "--min-daemons": ("min_daemons", "int"),
        "--stale-after": ("stale_after", "str"),
        "--output": ("output", "str"),
        "-o": ("output", "str"),
        **_COMMON,
    },
    "tail": {
        "-n": ("lines", "int"),
        "--lines": ("lines", "int"),
        "--since": ("since", "str"),
        "--until": ("until", "str"),
        "--type": ("types", "list"),
        "--correlation-id": ("correlation_id", "str"),
        "--source": ("source", "str"),
        "--state": ("state", "str"),
        "--output": ("output", "str"),
        "-o": ("output", "str"),
        **_COMMON,
    },
    "correlate": {
        "--output": ("output", "str"),
        "-o": ("output", "str"),
        "--expect": ("expect", "str"),
        "--within": ("within", "str"),
        **_COMMON,
    },
}
# Positionals: (parameter, fewest, most (None: any number, passed as a list)).
POSITIONALS: dict[str, tuple[str, int, int | None]] = {
    "status": ("", 0, 0),
    "tail": ("patterns", 0, None),
    "correlate": ("ident", 1, 1),
}
# The function each command runs: (module, attribute).
RUNNERS = {
    "status": (".status_run", "status"),
    "tail": (".tail_run", "tail"),
    "correlate": (".correlate_run", "correlate"),
}
# Bounds of the integer options (typer's min/max on the same options).
_INT_MIN = {"lines": 0}
_INT_FROM_CONFIG = {"max_dead", "max_corrupt", "max_stale", "min_daemons"}


def parse_reader(name: str, argv: list[str]) -> dict[str, Any] | None:
    """Keyword arguments of a plain reader call (root options as ``root_spool``/``root_config``), or None."""
    spec = READERS[name]
    found: dict[str, Any] = {"root_spool": None, "root_config": None}
    i = 0
    while i < len(argv) and argv[i] != name:
        opt, value, i = _option(argv, i)
        if opt not in ROOT_OPTIONS or value is None:
            return None
        found["root_" + opt[2:]] = value
    i += 1
    positionals: list[str] = []
    while i < len(argv):
        arg = argv[i]
        if arg == "-" or not arg.startswith("-"):
            positionals.append(arg)
            i += 1
            continue
        if arg in spec and spec[arg][1] == "flag":
            found[spec[arg][0]] = True
            i += 1
            continue
        opt, value, i = _option(argv, i)
        if opt not in spec or value is None or spec[opt][1] == "flag":
            return None
        param, kind = spec[opt]
        if kind == "list":
            found.setdefault(param, []).append(value)
        elif kind == "int":
            number = _int(name, param, value)
            if number is None:
                return None
            found[param] = number
        else:
            found[param] = Path(value) if kind == "path" else value  # the last occurrence wins, as with click
    param, fewest, most = POSITIONALS[name]
    if len(positionals) < fewest or (most is not None and len(positionals) > most):
        return None
    if positionals:
        found[param] = positionals if most is None else positionals[0]
    return found


def _int(command: str, param: str, text: str) -> int | None:
    """``text`` as click's int type reads it, if within the option's bounds; None lets typer say why not."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    lo, hi = _INT_MIN.get(param), None
    if param in _INT_FROM_CONFIG:
        from ..configspec import bounds

        b = bounds(command, param)
        lo, hi = b.get("min"), b.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return None
    return value


def run_reader(name: str, argv: list[str]) -> int | None:
    """Run a plain ``status``/``tail``/``correlate`` and return its exit code, or None to let typer handle it."""
    opts = parse_reader(name, argv)
    if opts is None:
        return None
    from .boundary import GLOBALS

    root_spool, root_config = opts.pop("root_spool"), opts.pop("root_config")
    GLOBALS.spool = Path(root_spool) if root_spool is not None else None
    GLOBALS.config = Path(root_config) if root_config is not None else None
    module, attr = RUNNERS[name]
    try:
        getattr(importlib.import_module(module, __package__), attr)(**opts)
    except SystemExit as exc:  # the commands' error boundary ends with SystemExit(code)
        return exc.code if isinstance(exc.code, int) else 1
    return 0
