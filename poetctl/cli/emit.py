"""``poetctl emit`` and ``poetctl validate``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidData, PoetError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, guarded, load
from .emitting import emit_events, iter_lines, open_input


def emit_cmd(
    event_type: Annotated[str | None, typer.Argument(metavar="TYPE", help="Event type, e.g. drift.detected.")] = None,
    payload: Annotated[
        str | None,
        typer.Argument(
            metavar="[PAYLOAD]",
            help="JSON payload file, an inline JSON object (an argument starting with '{'), "
            "or - for stdin (the default).",
        ),
    ] = None,
    source: Annotated[str | None, typer.Option(help="Emitting service (default: config 'source').")] = None,
    correlation_id: Annotated[str | None, typer.Option("--correlation-id", help="Correlation id.")] = None,
    causation_id: Annotated[str | None, typer.Option("--causation-id", help="Id of the causing event.")] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="Idempotency key: emitting an existing id is a no-op.")
    ] = None,
    id_from: Annotated[
        str | None,
        typer.Option(
            "--id-from",
            metavar="FIELD",
            help="Derive the id from this payload field (dotted path, e.g. execution_id): "
            "the same value always gives the same id, so re-running a batch adds only what is missing.",
        ),
    ] = None,
    environment: Annotated[str | None, typer.Option(help="metadata.environment (default: config).")] = None,
    schema_version: Annotated[
        int | None,
        typer.Option(
            "--schema-version",
            min=1,
            metavar="N",
            help="Validate against version N of the type's schema (default: the newest); "
            "recorded in metadata.schema_version.",
        ),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(
            "--priority",
            metavar="high|normal|low",
            help="Delivery class (default normal): the daemon fetches due high events first, "
            "never reordering events of one partition key. With --batch: for bare payloads (--type).",
        ),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            min=0.0,
            metavar="SECONDS",
            help="With [limits] set: wait up to this long for room in the spool or a rate token "
            "(default 1), then exit 75.",
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", metavar="FILE|-", help="JSON lines: envelopes, or bare payloads with --type."),
    ] = None,
    batch_type: Annotated[str | None, typer.Option("--type", help="Type of bare payloads in --batch.")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="With --batch: commit the valid lines, report the rest (exit 65).")
    ] = False,
    init: Annotated[
        bool, typer.Option("--init", help="Create the spool if it does not exist (else: exit 66).")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="local_only, nats or hybrid (default: POET_MODE, then delivery_mode)."),
    ] = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Emit an event (prints its id) or a batch of JSON lines (prints one id per line).

    The event is validated against its schema and durably committed before the
    id is printed. PAYLOAD is a file, '-' for stdin, or a JSON object given
    inline (an argument starting with '{'; write ./{name} for a file whose
    name starts with '{'). The spool must exist ('poetctl init'), unless
    --init is given.

    A batch is validated whole first (one bad line writes nothing), then
    committed in groups of 5,000; each group's ids are printed once the group
    is durable. A batch killed midway leaves every printed id committed, no
    partial file visible, and possibly some unprinted ids committed: re-run
    it when every line has an id (an envelope id, or --id-from) and only the
    missing events are added.

    Backpressure ([limits] in poet.toml): over max_pending or max_pending_bytes,
    emit waits up to --wait seconds (default 1) for room, then exits 75 with
    "spool full: N pending (limit M); retry later"; a source over its rate
    ([limits.sources]) waits for a token the same way. A batch commits the
    events that fit (their ids are printed) and stops at the first that does
    not: re-run it with ids (--id-from) to add only the rest.

    Exit codes: 2 bad usage (e.g. --priority urgent), 65 invalid input (nothing written; also an --id that exists
    in corrupt/), 66 input file or spool missing, 74 spool not writable,
    75 spool full or source throttled (nothing more written; retry later). An
    --id that exists in dead/ is a no-op (exit 0) with a note on stderr.

    Examples:

      poetctl emit drift.detected payload.json --correlation-id drift-alert-123

      poetctl emit system.health '{"service": "trainer", "status": "healthy"}'

      poetctl emit --batch runs.jsonl --type function.execution --id-from execution_id

      poetctl tail --output jsonl | poetctl emit --batch -
    """
    guarded(
        lambda: emit_events(
            load(spool, config),
            event_type=event_type,
            payload=payload,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            event_id=event_id,
            id_from=id_from,
            environment=environment,
            batch=batch,
            batch_type=batch_type,
            skip_invalid=skip_invalid,
            init=init,
            schema_version=schema_version,
            priority=priority,
            wait=wait,
            mode=mode,
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
            for where, doc in _documents(f, cfg.max_event_bytes):
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
        except PoetError as exc:  # unreadable file, or a line past the size limit (reading stops there)
            results.append({"file": exc.where or f, "valid": False, "error": str(exc)})
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


def _documents(source: str, limit: int) -> Iterator[tuple[str, bytes]]:
    """The documents of one ``validate`` input: ``(name, bytes)`` of the whole input, or of each line.

    Up to ``limit`` bytes (max_event_bytes) the input may be one JSON
    document, however formatted; a larger input can only be JSON lines, read
    line by line under the same limit.
    """
    from ..event import parse_json

    fh, name = open_input(source)
    try:
        head = fh.read(limit + 1)
        if len(head) <= limit:
            try:
                parse_json(head, where=name)
                yield name, head
                return
            except InvalidData:
                lines = [(n, ln) for n, ln in enumerate(head.splitlines(), 1) if ln.strip()]
                if len(lines) <= 1:
                    yield name, head
                    return
                yield from ((f"{name}:{n}", ln) for n, ln in lines)
                return
        for n, ln in iter_lines(fh, limit, name, head):
            if ln.strip():
                yield f"{name}:{n}", ln
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
