"""What ``poetctl emit`` does, without typer: shared by the typer command and the fast path.

Nothing here imports typer, rich or jsonschema, so the hottest scripted call
(``poetctl emit TYPE FILE``) can run it straight from :mod:`poetctl.cli.fastpath`.

Every input is read with the event size limit (``max_event_bytes``): a
single event reads at most the limit + 1 byte, and a batch is read line by
line holding at most the limit + one read chunk, so an endless line
(``/dev/zero``) is refused as soon as it passes the limit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from ..errors import InputMissing, InvalidData, PoetError, UsageError

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import IO, Any

BATCH_CHUNK = 5000  # events per group commit in a batch; its ids are printed once it is durable
READ_CHUNK = 1 << 16
MAX_NOTES = 20


def read_input(source: str, max_bytes: int) -> tuple[bytes, str]:
    """Read a file or ``-`` (stdin), at most ``max_bytes``; return the bytes and a name for messages.

    Raises :class:`InputMissing` (66) for a missing/unreadable file and
    :class:`InvalidData` (65) for input over ``max_bytes`` (having read one byte more).
    """
    fh, name = open_input(source)
    try:
        data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InputMissing(f"cannot read {name}: {exc.strerror}") from None
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
    if len(data) > max_bytes:
        raise InvalidData(f"input is larger than {max_bytes} bytes (max_event_bytes)", where=name)
    return data, name


def open_input(source: str) -> tuple[IO[bytes], str]:
    """A binary file object for a file name or ``-`` (stdin), and its name for messages."""
    if source == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(source, "rb"), source
    except FileNotFoundError:
        raise InputMissing(f"no such file: {source}") from None
    except IsADirectoryError:
        raise InputMissing(f"{source} is a directory; expected a JSON file") from None
    except OSError as exc:
        raise InputMissing(f"cannot read {source}: {exc.strerror}") from None


def is_inline(payload: str) -> bool:
    """True if PAYLOAD is a JSON object on the command line rather than a file name."""
    return payload.lstrip(" \t\r\n").startswith("{")


def payload_input(payload: str, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of PAYLOAD: an inline JSON object, a file, or ``-`` (stdin)."""
    if not is_inline(payload):
        return read_input(payload, max_bytes)
    data = payload.encode("utf-8", "surrogateescape")  # undecodable argv bytes come back as they were
    if len(data) > max_bytes:
        raise InvalidData(f"input is larger than {max_bytes} bytes (max_event_bytes)", where="<argument>")
    return data, "<argument>"


def iter_lines(fh: IO[bytes], limit: int, name: str, head: bytes = b"") -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)`` of ``head`` + the rest of ``fh``, never holding more than ``limit`` + a chunk.

    A line longer than ``limit`` bytes raises :class:`InvalidData` (65) naming
    ``FILE:LINE`` as soon as it passes the limit; nothing after it is read.
    """
    lineno = 0
    parts: list[bytes] = []  # the pieces of the line not yet ended by a newline
    size = 0
    chunk = head or _read(fh, name)
    while chunk:
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            lineno += 1
            line = chunk[start:nl]
            if parts:
                parts.append(line)
                line = b"".join(parts)
                parts, size = [], 0
            if len(line) > limit:
                raise _too_long(limit, name, lineno)
            yield lineno, line
            start = nl + 1
        if start < len(chunk):
            rest = chunk[start:]
            parts.append(rest)
            size += len(rest)
            if size > limit:
                raise _too_long(limit, name, lineno + 1)
        chunk = _read(fh, name)
    if parts:
        yield lineno + 1, b"".join(parts)


def _read(fh: IO[bytes], name: str) -> bytes:
    try:
        return fh.read(READ_CHUNK)
    except OSError as exc:
        raise InputMissing(f"cannot read {name}: {exc.strerror}") from None


def _too_long(limit: int, name: str, lineno: int) -> InvalidData:
    return InvalidData(
        f"line is longer than the limit of {limit} bytes (max_event_bytes); stopped reading here",
        where=f"{name}:{lineno}",
    )


def id_from_field(event_type: object, payload: object, field: str, where: str) -> str:
    """The idempotency key of an event whose payload ``field`` (dotted path) identifies it.

    ``<type>:<32 hex digits>``, the digits from a SHA-256 of the field's name
    and its value as canonical JSON; only the hex digits when the type is too
    long for an id. The same line always gets the same id, so re-running a
    batch commits only what is missing.
    """
    from ..event import canonical

    value: Any = payload
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InvalidData(
            f"$.payload.{field}: --id-from needs a non-empty string or an integer there, got {value!r}",
            where=where,
        )
    import hashlib

    digest = hashlib.sha256(field.encode() + b"\0" + canonical(value)).hexdigest()[:32]
    key = f"{event_type}:{digest}"
    return key if isinstance(event_type, str) and len(key) <= 128 else digest


def emit_events(
    cfg: Any,
    *,
    event_type: str | None = None,
    payload: str | None = None,
    source: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
    id_from: str | None = None,
    environment: str | None = None,
    batch: str | None = None,
    batch_type: str | None = None,
    skip_invalid: bool = False,
    init: bool = False,
    schema_version: int | str | None = None,
    priority: str | None = None,
    wait: float | str | None = None,
    mode: str | None = None,
) -> None:
    """Run ``poetctl emit`` with parsed options; raises PoetError subclasses (their exit codes)."""
    from ..router import EventRouter

    version = _schema_version(schema_version)
    wait_s = _wait(wait)
    if priority is not None and priority not in ("high", "normal", "low"):  # poetctl.priority.PRIORITIES
        raise UsageError(f"--priority {priority!r}: expected one of high, normal, low")

    if batch is not None:
        if event_type is not None or payload is not None:
            raise UsageError("--batch takes no TYPE/PAYLOAD arguments; use --type for bare payloads")
        if any(v is not None for v in (correlation_id, causation_id, event_id, source, environment)):
            raise UsageError("--batch lines carry their own ids and fields; per-event options do not apply")
        if version is not None and batch_type is None:
            raise UsageError("--schema-version goes with a single event or --batch --type (envelopes carry theirs)")
        if priority is not None and batch_type is None:
            raise UsageError("--priority goes with a single event or --batch --type (envelopes carry theirs)")
    else:
        if batch_type is not None or skip_invalid:
            raise UsageError("--type and --skip-invalid go with --batch")
        if event_type is None:
            raise UsageError("missing TYPE: poetctl emit TYPE [PAYLOAD], or poetctl emit --batch FILE")
        if event_id is not None and id_from is not None:
            raise UsageError("--id and --id-from exclude each other: give the id, or the field to derive it from")
    from .mode import resolve_mode

    transport = None
    if resolve_mode(mode, cfg) == "nats":
        from .mode import nats_transport

        transport = nats_transport(cfg)  # each id is printed after its PubAck
        router = EventRouter(transport=transport, config=cfg)
    else:
        # Only `init` (or --init) creates a spool: a mistyped --spool must not start a new one.
        from ..backends.fs.layout import SpoolLayout

        layout = SpoolLayout(cfg.spool)
        if init:
            layout.init()
        else:
            layout.require()
        router = EventRouter(config=cfg, create_spool=init)
    try:
        if batch is not None:
            _emit_batch(router, batch, batch_type, skip_invalid, id_from, version, priority, wait_s)
            return
        assert event_type is not None
        if payload is None:
            if sys.stdin.isatty():
                raise UsageError("no PAYLOAD: give a JSON file, a JSON object, '-' for stdin, or pipe the JSON in")
            payload = "-"
        data, name = payload_input(payload, cfg.max_event_bytes)
        from ..event import parse_json

        obj = parse_json(data, where=name, max_bytes=cfg.max_event_bytes)
        if not isinstance(obj, dict):
            raise InvalidData(f"$: expected a JSON object (the payload), got {type(obj).__name__}", where=name)
        if id_from is not None:
            event_id = id_from_field(event_type, obj, id_from, name)
        built = router.build(
            event_type,
            obj,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            id=event_id,
            environment=environment,
            where=name,
            schema_version=version,
            priority=priority,
        )
        added = router.commit_events([built], wait=wait_s)
        _note_dead(_dead_ids(router, [built], added))
        sys.stdout.write(built[0].id + "\n")
    finally:
        if transport is not None:
            transport.close()


def parse_batch_lines(
    router: Any,
    lines: Iterator[tuple[int, bytes]],
    name: str,
    batch_type: str | None,
    id_from: str | None = None,
    schema_version: int | None = None,
    priority: str | None = None,
) -> tuple[list[Any], list[str]]:
    """Parse and validate JSON lines; return built ``(event, keyed)`` pairs and error messages.

    Also refuses, per line, an id another line used for different content and
    an id that exists in ``corrupt/``.
    """
    from ..event import parse_json
    from ..router import same_content

    built: list[Any] = []
    linenos: list[int] = []
    errors: list[str] = []
    first: dict[str, int] = {}  # keyed id -> index in built
    limit = router.config.max_event_bytes
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = parse_json(line, where=where, max_bytes=limit)
            if isinstance(obj, dict) and "type" in obj and "payload" in obj:
                if batch_type is not None and obj["type"] != batch_type:
                    raise InvalidData(f"$.type: {obj['type']!r} is not the --type {batch_type!r}", where=where)
                if id_from is not None and "id" not in obj and "checksum" not in obj:  # a sealed one needs its own
                    obj["id"] = id_from_field(obj["type"], obj["payload"], id_from, where)
                ev, keyed = router.ingest(obj, where)
            elif batch_type is not None:
                key = None
                if id_from is not None and isinstance(obj, dict):  # else build() says what is wrong
                    key = id_from_field(batch_type, obj, id_from, where)
                ev, keyed = router.build(
                    batch_type, obj, id=key, where=where, schema_version=schema_version, priority=priority
                )
            else:
                raise InvalidData(
                    "expected an event envelope with 'type' and 'payload' (or pass --type for bare payloads)",
                    where=where,
                )
            if keyed:
                j = first.setdefault(ev.id, len(built))
                if j != len(built):
                    if not same_content(built[j][0], ev):
                        raise InvalidData(
                            f"id {ev.id!r} was already used by {name}:{linenos[j]} for different content; "
                            "one id is one event (give this line another id, or make the two lines identical)",
                            where=where,
                        )
                elif (reason := router.quarantine_reason(ev.id)) is not None:
                    del first[ev.id]
                    raise InvalidData(
                        f"id {ev.id} exists in corrupt/ (quarantined: {reason}); "
                        f"see 'poetctl corrupt show {ev.id}.json', requeue it once fixed, or use another id",
                        where=where,
                    )
            built.append((ev, keyed))
            linenos.append(lineno)
        except InvalidData as exc:
            errors.append(str(exc))
    return built, errors


def _wait(value: float | str | None) -> float:
    """``--wait`` in seconds (the fast path hands it over as text); default 1 s, the seed's publish timeout."""
    from ..limits import DEFAULT_WAIT

    if value is None:
        return DEFAULT_WAIT
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0 <= f <= 86400:
        raise UsageError(f"--wait {value!r}: expected seconds from 0 to 86400")
    return f


def _schema_version(value: int | str | None) -> int | None:
    """``--schema-version`` as an integer (the fast path hands it over as text)."""
    if value is None or isinstance(value, int):
        return value
    if not value.isdigit() or not value.isascii():
        raise UsageError(f"--schema-version {value!r}: expected a positive integer")
    return int(value)


def _emit_batch(
    router: Any,
    batch: str,
    batch_type: str | None,
    skip_invalid: bool,
    id_from: str | None,
    version: int | None,
    priority: str | None = None,
    wait: float = 1.0,
) -> None:
    # A batch parses and seals with orjson from its first line (poetctl.event and poetctl.envelope use
    # it once it is loaded); only a one-event emit starts without it (EnvelopeBuilder._use_orjson).
    import orjson  # noqa: F401

    fh, name = open_input(batch)
    try:
        lines = iter_lines(fh, router.config.max_event_bytes, name)
        built, errors = parse_batch_lines(router, lines, name, batch_type, id_from, version, priority)
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
    if errors and not skip_invalid:
        for e in errors[:20]:
            sys.stderr.write(f"poetctl: error: {e}\n")
        more = " (first 20 shown)" if len(errors) > 20 else ""
        raise InvalidData(f"{len(errors)} invalid line(s){more}; nothing was written", where=name)
    _commit_groups(router, built, name, wait)
    if errors:
        for e in errors:
            sys.stderr.write(f"poetctl: error: {e}\n")
        raise InvalidData(f"{len(errors)} invalid line(s) skipped; {len(built)} committed", where=name)


def _commit_groups(router: Any, built: list[Any], name: str, wait: float = 1.0) -> None:
    """Commit ``built`` in groups, printing (and flushing) each group's ids once the group is durable.

    A process killed here leaves whole groups committed with their ids
    printed, at most one group partly published (each event whole; the rest
    of that group stays in ``events/tmp``, never visible) and nothing of the
    later groups: re-running a batch whose lines all have ids commits only
    what is missing. With ``[limits]``, a group is committed as far as it
    fits; when nothing more fits within ``wait`` seconds, Backpressure (75)
    says how many were committed (their ids are on stdout).
    """
    from ..limits import Backpressure

    out = sys.stdout
    dead: list[str] = []
    start = 0
    while start < len(built):
        chunk = built[start : start + BATCH_CHUNK]
        try:
            added = router.commit_events(chunk, wait=wait, partial=True)
        except PoetError as exc:
            if start:
                note = f" ({start} of {len(built)} events were committed before this; their ids are on stdout)"
                if isinstance(exc, Backpressure):
                    raise Backpressure(exc.message + note, retry_after=exc.retry_after, where=name) from None
                raise type(exc)(exc.message + note, where=exc.where or name) from None
            raise
        done = chunk[: len(added)]
        dead += _dead_ids(router, done, added)
        out.write("".join(ev.id + "\n" for ev, _ in done))
        out.flush()
        start += len(done)
    _note_dead(dead)


def _dead_ids(router: Any, built: list[Any], added: list[bool]) -> list[str]:
    """The ids of ``built`` that were no-ops because they are dead-lettered (looked up only for the no-ops)."""
    from ..transport import State

    state_of = router.transport.state_of
    return [ev.id for (ev, _), new in zip(built, added, strict=True) if not new and state_of(ev.id) is State.DEAD]


def _note_dead(ids: list[str]) -> None:
    """Say so when an emit was a no-op because its id is a dead-lettered event (exit stays 0)."""
    write = sys.stderr.write
    for eid in ids[:MAX_NOTES]:
        write(
            f"poetctl: note: id {eid} exists in dead/ (dead-lettered); nothing was written. "
            f"See 'poetctl dead show {eid}'; 'poetctl dead retry --id {eid}' hands it back to the daemon\n"
        )
    if len(ids) > MAX_NOTES:
        write(f"poetctl: note: ... and {len(ids) - MAX_NOTES} more ids that exist in dead/\n")
