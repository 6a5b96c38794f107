"""What ``poetctl emit`` does, without typer: shared by the typer command and the fast path.

Nothing here imports typer, rich or jsonschema, so the hottest scripted call
(``poetctl emit TYPE FILE``) can run it straight from :mod:`poetctl.cli.fastpath`.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import InputMissing, InvalidData, PoetError, UsageError

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


def emit_events(
    cfg: Any,
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
) -> None:
    """Run ``poetctl emit`` with parsed options; raises PoetError subclasses (their exit codes)."""
    from ..router import EventRouter

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
