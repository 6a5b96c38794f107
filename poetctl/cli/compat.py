"""``poetctl schemas check-compat``: is a schema change backward, forward, full or breaking."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ..errors import InputMissing, InvalidData, UsageError
from .common import errors_to_exit, load

MAX_SCHEMA_BYTES = 1 << 20


def _read_schema(path: Path) -> dict[str, Any]:
    """A schema file, checked as the registry checks schemas (no outside references, compilable)."""
    import orjson

    from ..schemas import check_references, fast_validator

    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SCHEMA_BYTES + 1)
    except FileNotFoundError:
        raise InputMissing(f"no such schema file {path}") from None
    except OSError as exc:
        raise InputMissing(f"cannot read schema file {path}: {exc.strerror}") from None
    if len(data) > MAX_SCHEMA_BYTES:
        raise InvalidData(f"more than {MAX_SCHEMA_BYTES} bytes; expected a JSON Schema file", where=str(path))
    try:
        schema = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidData(f"invalid JSON: {exc}", where=str(path)) from None
    if not isinstance(schema, dict):
        raise InvalidData("a schema must be a JSON object", where=str(path))
    check_references(schema, path)
    try:
        fast_validator(schema)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidData(f"invalid JSON Schema: {first}", where=str(path)) from None
    return schema


def _version(text: str) -> int:
    if not text.isascii() or not text.isdigit() or text.startswith("0"):
        raise UsageError(f"{text!r} is not a schema version; expected TYPE OLD NEW with versions 1, 2, ...")
    return int(text)


@errors_to_exit
def check_compat(args: list[str], require: str, output: str | None, config: Path | None) -> None:
    from ..schemacompat import MODES, check
    from ..schemas import SchemaRegistry

    if require not in MODES:
        raise UsageError(f"--require {require!r}: expected one of {', '.join(MODES)}")
    if len(args) == 2:
        old_name, new_name = args
        old, new = _read_schema(Path(old_name)), _read_schema(Path(new_name))
    elif len(args) == 3:
        event_type, a, b = args
        reg = SchemaRegistry(load(None, config).schema_paths)
        va, vb = _version(a), _version(b)
        old, new = reg.schema(event_type, va), reg.schema(event_type, vb)
        old_name, new_name = f"{event_type}/{va}", f"{event_type}/{vb}"
    else:
        raise UsageError("expected TYPE OLD NEW (two versions of a registered type) or OLD.json NEW.json")
    verdict = check(old, new)
    ok = verdict.satisfies(require)
    if output == "json":
        from .output import write_json

        write_json(
            {
                "old": old_name,
                "new": new_name,
                "level": verdict.level,
                "require": require,
                "compatible": ok,
                "reasons": [r.as_dict() for r in verdict.reasons],
            }
        )
    elif output not in (None, "text"):
        raise UsageError(f"--output {output!r}: expected text or json")
    else:
        from ..safetext import clean

        out = sys.stdout
        out.write(f"{verdict.level}: {clean(old_name)} -> {clean(new_name)}\n")
        for r in verdict.reasons:
            out.write(f"  breaks {r.breaks}: {r.rule} at {clean(r.path)}: {clean(r.detail)}\n")
        if not ok:
            out.write(f"not {require}-compatible (--require {require})\n")
    if not ok:
        raise typer.Exit(1)
