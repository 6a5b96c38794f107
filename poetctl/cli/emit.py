"""``poetctl emit`` and ``poetctl validate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputMissing, InvalidData, PoetError, UsageError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

BATCH_CHUNK = 5000


def read_input(source: str, max_bytes: int) -> tuple[bytes, str]:
    """Read a file or ``-`` (stdin); return the bytes and a name for messages.

    Raises :class:`InputMissing` (66) for a missing/unreadable file and
    :class:`InvalidData` (65) for input over ``max_bytes``.
    """
    if source == "-":
        data = sys.stdin.buffer.read(max_bytes + 1) if max_bytes else sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        name = source
        try:
            with open(source, "rb") as fh:
                data = fh.read(max_bytes + 1) if max_bytes else fh.read()
        except FileNotFoundError:
            raise InputMissing(f"no such file: {source}") from None
        except IsADirectoryError:
            raise InputMissing(f"{source} is a directory; expected a JSON file") from None
        except OSError as exc:
            raise InputMissing(f"cannot read {source}: {exc.strerror}") from None
    if max_bytes and len(data) > max_bytes:
        raise InvalidData(f"input is larger than {max_bytes} bytes (max_event_bytes)", where=name)
    return data, name


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
    _emit(event_type, payload, source, correlation_id, causation_id, event_id, environment, batch, batch_type,
          skip_invalid, spool, config)


@errors_to_exit
def _emit(
    event_type: str | None,
    payload: str | None,
    source: str | None,
    correlation_id: str | None,
    causation_id: str | None,
    event_id: str | None,
    environment: str | None,
    batch: str | None,
    batch_type: str | None,
    skip_invalid: bool,
    spool: Path | None,
    config: Path | None,
) -> None:
    from ..router import EventRouter

    cfg = load(spool, config)
    router = EventRouter(config=cfg)
    if batch is not None:
        if event_type is not None or payload is not None:
            raise UsageError("--batch takes no TYPE/PAYLOAD arguments; use --type for bare payloads")
        if any(v is not None for v in (correlation_id, causation_id, event_id, source, environment)):
            raise UsageError("--batch lines carry their own ids and fields; per-event options do not apply")
        _emit_batch(router, batch, batch_type, skip_invalid)
        return
    if batch_type is not None or skip_invalid:
        raise UsageError("--type and --skip-invalid go with --batch")
    if event_type is None:
        raise UsageError("missing TYPE: poetctl emit TYPE [PAYLOAD], or poetctl emit --batch FILE")
    if payload is None:
        if sys.stdin.isatty():
            raise UsageError("no PAYLOAD: give a JSON file, '-' for stdin, or pipe the JSON in")
        payload = "-"
    data, name = read_input(payload, cfg.max_event_bytes)
    from ..event import parse_json

    obj = parse_json(data, where=name, max_bytes=cfg.max_event_bytes)
    if not isinstance(obj, dict):
        raise InvalidData(f"$: expected a JSON object (the payload), got {type(obj).__name__}", where=name)
    eid = router.emit(
        event_type,
        obj,
        source=source,
        correlation_id=correlation_id,
        causation_id=causation_id,
        id=event_id,
        environment=environment,
        where=name,
    )
    sys.stdout.write(eid + "\n")


def parse_batch_lines(router: Any, data: bytes, name: str, batch_type: str | None) -> tuple[list[Any], list[str]]:
    """Parse and validate JSON lines; return built ``(event, keyed)`` pairs and error messages."""
    from ..event import parse_json

    built: list[Any] = []
    errors: list[str] = []
    limit = router.config.max_event_bytes
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = parse_json(line, where=where, max_bytes=limit)
            if isinstance(obj, dict) and "type" in obj and "payload" in obj:
                if batch_type is not None and obj["type"] != batch_type:
                    raise InvalidData(f"$.type: {obj['type']!r} is not the --type {batch_type!r}", where=where)
                built.append(router.ingest(obj, where))
            elif batch_type is not None:
                built.append(router.build(batch_type, obj, where=where))
            else:
                raise InvalidData(
                    "expected an event envelope with 'type' and 'payload' (or pass --type for bare payloads)",
                    where=where,
                )
        except PoetError as exc:
            if not isinstance(exc, InvalidData):
                raise
            errors.append(str(exc))
    return built, errors


def _emit_batch(router: Any, batch: str, batch_type: str | None, skip_invalid: bool) -> None:
    data, name = read_input(batch, 0)
    built, errors = parse_batch_lines(router, data, name, batch_type)
    if errors and not skip_invalid:
        for e in errors[:20]:
            sys.stderr.write(f"poetctl: error: {e}\n")
        more = " (first 20 shown)" if len(errors) > 20 else ""
        raise InvalidData(f"{len(errors)} invalid line(s){more}; nothing was written", where=name)
    out = sys.stdout
    for start in range(0, len(built), BATCH_CHUNK):
        chunk = built[start : start + BATCH_CHUNK]
        router.commit_events(chunk)
        out.write("".join(ev.id + "\n" for ev, _ in chunk))
    out.flush()
    if errors:
        for e in errors:
            sys.stderr.write(f"poetctl: error: {e}\n")
        raise InvalidData(f"{len(errors)} invalid line(s) skipped; {len(built)} committed", where=name)


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
