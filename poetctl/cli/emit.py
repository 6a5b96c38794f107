"""``poetctl emit`` and ``poetctl validate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidData, PoetError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, guarded, load
from .emitting import emit_events, read_input


def emit_cmd(
    event_type: Annotated[str | None, typer.Argument(metavar="TYPE", help="Event type, e.g. drift.detected.")] = None,
    payload: Annotated[
        str | None, typer.Argument(metavar="[PAYLOAD]", help="JSON payload file, or - for stdin (the default).")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Emitting service (default: config 'source').")] = None,
    correlation_id: Annotated[str | None, typer.Option("--correlation-id", help="Correlation id.")] = None,
    causation_id: Annotated[str | None, typer.Option("--causation-id", help="Id of the causing event.")] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="Idempotency key: emitting an existing id is a no-op.")
    ] = None,
    environment: Annotated[str | None, typer.Option(help="metadata.environment (default: config).")] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", metavar="FILE|-", help="JSON lines: envelopes, or bare payloads with --type."),
    ] = None,
    batch_type: Annotated[str | None, typer.Option("--type", help="Type of bare payloads in --batch.")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="With --batch: commit the valid lines, report the rest (exit 65).")
    ] = False,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Emit an event (prints its id) or a batch of JSON lines (prints one id per line).

    The event is validated against its schema and durably committed before the
    id is printed. Exit codes: 65 invalid input (nothing written), 66 input
    file missing, 74 spool not writable.

    Examples:

      poetctl emit drift.detected payload.json --correlation-id drift-alert-123

      poetctl tail --output jsonl | poetctl emit --batch -
    """
    guarded(
        lambda: emit_events(
            load(spool, config),
            event_type,
            payload,
            source,
            correlation_id,
            causation_id,
            event_id,
            environment,
            batch,
            batch_type,
            skip_invalid,
        )
    )


def validate_cmd(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="Event files (or - for stdin).")],
    payload_type: Annotated[
        str | None, typer.Option("--type", help="Treat each file as a bare payload of this type.")
    ] = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check events (or bare payloads with --type) without writing anything.

    A file holds one JSON document or JSON lines. Exit 0 if all are valid,
    65 if any is invalid, 66 if a file is missing. Meant for CI.
    """
    _validate(files, payload_type, output, config)


@errors_to_exit
def _validate(files: list[str], payload_type: str | None, output: str | None, config: Path | None) -> None:
    from ..event import parse_json
    from ..router import EventRouter
    from .output import resolve_format, write_jsonl

    fmt = resolve_format(output, ("table", "jsonl", "json"))
    cfg = load(None, config)
    router = EventRouter(config=cfg)
    results: list[dict[str, Any]] = []
    worst = 0
    for f in files:
        try:
            data, name = read_input(f, cfg.max_event_bytes * 64)
        except PoetError as exc:
            results.append({"file": f, "valid": False, "error": str(exc)})
            worst = max(worst, exc.exit_code)
            continue
        docs: list[tuple[str, bytes]]
        try:
            parse_json(data, where=name)
            docs = [(name, data)]
        except InvalidData:
            lines = [ln for ln in data.splitlines() if ln.strip()]
            docs = [(f"{name}:{i}", ln) for i, ln in enumerate(data.splitlines(), 1) if ln.strip()]
            if len(lines) <= 1:
                docs = [(name, data)]
        for where, doc in docs:
            try:
                obj = parse_json(doc, where=where, max_bytes=cfg.max_event_bytes)
                if payload_type is not None:
                    ev, _ = router.build(payload_type, obj, where=where)
                else:
                    ev, _ = router.ingest(obj, where)
                results.append({"file": where, "valid": True, "type": ev.type, "topic": ev.topic})
            except InvalidData as exc:
                results.append({"file": where, "valid": False, "error": str(exc)})
                worst = max(worst, exc.exit_code)
    for r in results:
        if not r["valid"]:
            sys.stderr.write(f"poetctl: error: {r['error']}\n")
    if fmt == "table":
        for r in results:
            mark = "ok     " if r["valid"] else "INVALID"
            sys.stdout.write(f"{mark} {r['file']}" + (f"  ({r['type']})" if r["valid"] else "") + "\n")
    elif fmt == "json":
        from .output import write_json

        write_json(results)
    else:
        write_jsonl(results)
    if worst:
        raise typer.Exit(worst)
