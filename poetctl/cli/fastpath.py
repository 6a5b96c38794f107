"""A typer-free route for the hottest scripted call: ``poetctl emit TYPE [PAYLOAD] [options]``.

Shell scripts and CI call ``emit`` once per event, so its start-up is the
product's latency there; typer alone costs more than the whole emit. This
module recognises only the plain form (``TYPE``, optional ``PAYLOAD``: a
file, ``-`` or an inline JSON object, the value options below, root ``--spool``/``--config``) and returns
None for anything else (``--help``, ``--batch``, unknown options, ``--``), which then
goes through typer as usual. The work itself is the same function the typer
command calls (:func:`poetctl.cli.emitting.emit_events`), and a test checks
both routes agree.
"""

from __future__ import annotations

import sys
from pathlib import Path
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
