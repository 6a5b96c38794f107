"""Schema registry over ``schemas/`` and user schema directories.

One file per type: ``<type>.json`` holds the JSON Schema (Draft 2020-12) of
that type's *payload*; ``envelope.json`` holds the envelope's. Built-in
schemas ship inside the package (``poetctl/_schemas`` in a wheel, the repo's
top-level ``schemas/`` in a source checkout); user directories come from
``event_schemas.paths`` / ``POET_SCHEMA_PATH`` and may add types but not
replace built-in ones.

Validation uses jsonschema-rs when it is importable (fast path) and always
produces error messages with the reference validator, python-jsonschema; a
test proves the two agree on every shipped schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from .errors import InvalidData, UnknownType
from .event import check_type

MAX_REPORTED_ERRORS = 5
# jsonschema's messages for these already say what was expected.
_SELF_EXPLAINING = frozenset(
    {
        "required",
        "additionalProperties",
        "enum",
        "const",
        "type",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)


@cache
def builtin_dir() -> Path:
    """Directory of the shipped schemas (wheel copy first, then the source tree)."""
    here = Path(__file__).resolve().parent
    packaged = here / "_schemas"
    if (packaged / "envelope.json").is_file():
        return packaged
    return here.parent / "schemas"


def json_path(parts: Iterable[Any], prefix: str = "$") -> str:
    """Render a jsonschema error path as ``$.a.b[0]``."""
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


# -- a fast, conservative check of envelope.json --------------------------------------------
# The daemon checks the envelope of every event it reads; the schema validator
# costs ~8 us per event on the machines we measure, this ~1.5 us. The check is
# deliberately *stricter or equal* to envelope.json: True means the schema
# accepts the envelope, False only means "ask the schema" (which then decides
# and explains). tests/test_schemas.py holds it to that on valid and mutated
# envelopes. Keep it in step with schemas/envelope.json.
_ENVELOPE_KEYS = frozenset(
    ("id", "type", "source", "timestamp", "topic", "correlation_id", "causation_id", "expires_at")
) | {"metadata", "payload", "checksum", "causation_depth"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_TOPIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:/[A-Za-z0-9_][A-Za-z0-9_-]*)*")
_NO_CONTROL = re.compile(r"[^\x00-\x1f]+")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")
MAX_CAUSATION_DEPTH = 1_000_000  # envelope.json's maximum for causation_depth


def _text(v: Any, lo: int, hi: int) -> bool:
    return type(v) is str and lo <= len(v) <= hi


def _nonneg_number(v: Any) -> bool:
    return (type(v) is float or type(v) is int) and v >= 0


def _head_valid(type_: Any, topic: Any, source: Any, version: Any, environment: Any, service: Any) -> bool:
    return (
        type(type_) is str
        and _TYPE.fullmatch(type_) is not None
        and type(topic) is str
        and len(topic) <= 512
        and _TOPIC.fullmatch(topic) is not None
        and _text(source, 1, 256)
        and type(version) is str
        and _VERSION.fullmatch(version) is not None
        and _text(environment, 1, 64)
        and _text(service, 1, 256)
    )


# (type, topic, source, version, environment, service) tuples already found valid:
# a spool holds few distinct ones, so most events skip six checks. Bounded.
_VALID_HEADS: set[tuple[Any, ...]] = set()
_MAX_HEADS = 4096


def envelope_surely_valid(d: Any, checksum_verified: bool = False) -> bool:
    """True only if ``d`` certainly matches envelope.json (see the comment above).

    ``checksum_verified``: the caller compared ``d["checksum"]`` with the
    computed ``sha256:<hex>``, which settles its pattern.
    """
    if type(d) is not dict or not _ENVELOPE_KEYS.issuperset(d):
        return False
    get = d.get
    m = get("metadata")
    if type(m) is not dict:
        return False
    mget = m.get
    head = (get("type"), get("topic"), get("source"), mget("version"), mget("environment"), mget("service"))
    try:
        known = head in _VALID_HEADS
    except TypeError:  # an unhashable value (a list, an object): certainly not a valid head
        return False
    if not known:
        if not _head_valid(*head):
            return False
        if len(_VALID_HEADS) < _MAX_HEADS:
            _VALID_HEADS.add(head)
    v = get("id")
    if type(v) is not str or _ID.fullmatch(v) is None:
        return False
    v = get("timestamp")
    if not ((type(v) is float or type(v) is int) and v >= 0) or type(get("payload")) is not dict:
        return False
    if not checksum_verified and "checksum" in d:
        v = d["checksum"]
        if type(v) is not str or _CHECKSUM.fullmatch(v) is None:
            return False
    if "correlation_id" in d:
        v = d["correlation_id"]
        if not _text(v, 1, 256) or _NO_CONTROL.fullmatch(v) is None:
            return False
    if "causation_id" in d:
        v = d["causation_id"]
        if type(v) is not str or _ID.fullmatch(v) is None:
            return False
    if "causation_depth" in d:
        # Exactly int: the schema's "integer" also admits 2.0, left to the schema to decide.
        v = d["causation_depth"]
        if type(v) is not int or not 0 <= v <= MAX_CAUSATION_DEPTH:
            return False
    return "expires_at" not in d or _nonneg_number(d["expires_at"])


class _Compiled:
    """One schema with its fast and reference validators (the latter built lazily)."""

    __slots__ = ("_fast", "_ref", "path", "schema")

    def __init__(self, schema: dict[str, Any], path: Path) -> None:
        self.schema = schema
        self.path = path
        self._ref: Any = None
        self._fast: Any = None
        try:
            import jsonschema_rs

            self._fast = jsonschema_rs.validator_for(schema)
        except ImportError:
            pass
        except Exception as exc:  # jsonschema-rs rejects an invalid schema here
            raise InvalidData(f"invalid JSON Schema: {exc}", where=str(path)) from None

    def reference(self) -> Any:
        if self._ref is None:
            import jsonschema

            cls = jsonschema.validators.validator_for(self.schema, default=jsonschema.Draft202012Validator)
            try:
                cls.check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                raise InvalidData(f"invalid JSON Schema: {exc.message}", where=str(self.path)) from None
            self._ref = cls(self.schema)
        return self._ref

    def is_valid(self, instance: Any) -> bool:
        if self._fast is not None:
            return bool(self._fast.is_valid(instance))
        return bool(self.reference().is_valid(instance))

    def errors(self, instance: Any, prefix: str) -> list[str]:
        """Human-readable errors from the reference validator, most relevant first."""
        import jsonschema

        errs = sorted(self.reference().iter_errors(instance), key=jsonschema.exceptions.relevance)
        out = []
        for e in errs[:MAX_REPORTED_ERRORS]:
            line = f"{json_path(e.absolute_path, prefix)}: {e.message}"
            if e.validator not in _SELF_EXPLAINING:
                rule = orjson.dumps(e.validator_value).decode()
                if len(rule) > 120:
                    rule = rule[:117] + "..."
                line += f" (expected {e.validator}: {rule})"
            out.append(line)
        if len(errs) > MAX_REPORTED_ERRORS:
            out.append(f"... and {len(errs) - MAX_REPORTED_ERRORS} more")
        return out


class SchemaRegistry:
    """Finds, loads (lazily, once) and applies schemas. Not thread-hostile: loads are idempotent."""

    def __init__(self, extra_paths: Sequence[Path] = ()) -> None:
        self.builtin = builtin_dir()
        self.extra_paths = [Path(p) for p in extra_paths]
        self._cache: dict[str, _Compiled] = {}
        self._is_valid: dict[str, Any] = {}  # type -> the fast validator's is_valid (hot path)

    # -- lookup -------------------------------------------------------------
    def path_for(self, event_type: str) -> Path | None:
        """The schema file for ``event_type``, built-in first; None if unregistered."""
        check_type(event_type)
        for d in (self.builtin, *self.extra_paths):
            p = d / f"{event_type}.json"
            if p.is_file():
                return p
        return None

    def types(self) -> dict[str, Path]:
        """Every registered type and its schema file (built-ins win over user dirs)."""
        found: dict[str, Path] = {}
        for d in (self.builtin, *self.extra_paths):
            if not d.is_dir():
                continue
            for p in sorted(d.glob("*.json")):
                t = p.name[:-5]
                if t != "envelope" and "." in t:
                    found.setdefault(t, p)
        return dict(sorted(found.items()))

    def _compiled(self, name: str, path: Path | None, where: str | None = None) -> _Compiled:
        c = self._cache.get(name)
        if c is not None:
            return c
        if path is None:
            raise self._unknown(name, where)
        try:
            schema = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InvalidData(f"cannot load schema: {exc}", where=str(path)) from None
        if not isinstance(schema, dict):
            raise InvalidData("a schema must be a JSON object", where=str(path))
        c = self._cache[name] = _Compiled(schema, path)
        if c._fast is not None:
            self._is_valid[name] = c._fast.is_valid
        return c

    def _unknown(self, event_type: str, where: str | None = None) -> UnknownType:
        target = self.extra_paths[0] if self.extra_paths else Path("schemas/custom")
        return UnknownType(
            f"unknown event type {event_type!r}: no schema {event_type}.json in "
            f"{', '.join(str(d) for d in (self.builtin, *self.extra_paths))}. To register it, "
            f"write a JSON Schema (Draft 2020-12) of its payload to {target}/{event_type}.json "
            "and list that directory in poet.toml (event_schemas.paths) or POET_SCHEMA_PATH; "
            "'poetctl schemas' lists the known types",
            where=where,
        )

    def schema(self, event_type: str) -> dict[str, Any]:
        """The payload schema of ``event_type``; raises :class:`UnknownType`."""
        if event_type not in self._cache:
            self._compiled(event_type, self.path_for(event_type))
        return self._cache[event_type].schema

    def topic_template(self, event_type: str) -> str | None:
        """``x-poet-topic`` of a user schema (None for built-ins and when absent)."""
        t = self.schema(event_type).get("x-poet-topic")
        return t if isinstance(t, str) else None

    # -- validation ---------------------------------------------------------
    def validate_payload(self, event_type: str, payload: Any, where: str | None = None, prefix: str = "$") -> None:
        """Raise :class:`InvalidData` (all messages, JSON paths) unless ``payload`` is valid."""
        fast = self._is_valid.get(event_type)
        if fast is not None and fast(payload):
            return
        c = self._cache.get(event_type) or self._compiled(event_type, self.path_for(event_type), where)
        if not c.is_valid(payload):
            raise InvalidData(
                f"{event_type} payload does not match {c.path.name}:\n  " + "\n  ".join(c.errors(payload, prefix)),
                where=where,
            )

    def validate_envelope(self, envelope: Any, where: str | None = None) -> None:
        """Raise :class:`InvalidData` unless ``envelope`` matches ``envelope.json``."""
        c = self._cache.get("envelope") or self._compiled("envelope", self.builtin / "envelope.json")
        if not c.is_valid(envelope):
            raise InvalidData(
                "event does not match envelope.json:\n  " + "\n  ".join(c.errors(envelope, "$")), where=where
            )

    def check_envelope(
        self, envelope: dict[str, Any], where: str | None = None, *, checksum_verified: bool = False
    ) -> None:
        """:meth:`validate_envelope` without handing the payload to the validator.

        The payload has its own schema; validating the envelope with an empty
        payload object in its place gives the same verdict at a fraction of
        the cost (the fast path converts the whole document otherwise).
        """
        if envelope_surely_valid(envelope, checksum_verified):
            return
        head = dict(envelope)
        if isinstance(head.get("payload"), dict):
            head["payload"] = {}
        c = self._cache.get("envelope") or self._compiled("envelope", self.builtin / "envelope.json")
        if not c.is_valid(head):
            self.validate_envelope(envelope, where)

    def check_known(self, event_type: str, where: str | None = None) -> None:
        """Raise :class:`UnknownType` unless a schema is registered for ``event_type``."""
        if event_type not in self._cache:
            self._compiled(event_type, self.path_for(event_type), where)
