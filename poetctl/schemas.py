"""Schema registry over ``schemas/`` and user schema directories.

One file per type and version: ``<type>/<n>.json`` holds the JSON Schema
(Draft 2020-12) of version n of that type's *payload* (see
:mod:`poetctl.schemafiles`; a flat ``<type>.json`` is version 1);
``envelope.json`` holds the envelope's. Built-in
schemas ship inside the package (``poetctl/_schemas`` in a wheel, the repo's
top-level ``schemas/`` in a source checkout); user directories come from
``event_schemas.paths`` / ``POET_SCHEMA_PATH`` and may add types but not
replace built-in ones.

Validation and its error messages both come from jsonschema-rs, configured so
that a schema can never make poetctl fetch or read anything, nor spin:

* no retrieval: a ``$ref`` (or ``$schema``) must stay inside the schema file
  (``#/$defs/x``, ``#anchor``, an embedded ``$id``); anything else is refused
  when the schema is loaded (see :func:`check_references`), and the validator
  is given a retriever that refuses, in case a reference slips past the check;
* linear-time regular expressions (the Rust ``regex`` engine, no backtracking)
  for ``pattern``, ``patternProperties`` and ``propertyNames``; a pattern that
  needs backtracking (lookaround, backreferences) is refused when loaded.

python-jsonschema, which the messages used to come from, runs patterns with
Python's backtracking ``re`` and fetches remote references by default; it now
only serves the tests as an independent check of the verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path

from .envelopefast import MAX_CAUSATION_DEPTH as MAX_CAUSATION_DEPTH  # re-exported: the check lived here
from .envelopefast import TIME_MAX as TIME_MAX
from .envelopefast import TIME_MIN as TIME_MIN
from .envelopefast import envelope_surely_valid as envelope_surely_valid
from .errors import InvalidData, UnknownType
from .event import check_type
from .ids import lazy_pattern
from .schemafiles import VERSION_NAME_RE, check_version, defines, types_in, versions_in
from .schemarefs import KNOWN_DRAFTS as KNOWN_DRAFTS  # re-exported: they lived here
from .schemarefs import check_references as check_references
from .schemarefs import fast_validator as fast_validator
from .schemarefs import ref_kind as ref_kind
from .strictjson import path_part

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_REPORTED_ERRORS = 5
# Payloads a registry may accept on :mod:`poetctl.schemaproof`'s proof alone, before it compiles
# jsonschema-rs: a one-event command never imports it; a long run (the daemon, a batch) compiles it
# within a few events and then uses it alone, as before: it is 10-30x faster per payload than the
# Python proof (1.5 us vs 17 us for a small system.health, 38 us vs 1.2 ms for 500 metrics).
PROOF_BUDGET = 8
_MAX_COUNTED_ERRORS = 1000
_MAX_LINE = 300
_CONTROL = lazy_pattern(r"[\x00-\x1f\x7f]")
# jsonschema-rs's messages for these already say what was expected.
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
        "pattern",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "multipleOf",
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
    return prefix + "".join(path_part(p) for p in parts)


_NOTHING = object()


class _Compiled:
    """One schema and its validator."""

    __slots__ = ("_fast", "path", "schema")

    def __init__(self, schema: dict[str, Any], path: Path) -> None:
        self.schema = schema
        self.path = path
        check_references(schema, path)
        try:
            self._fast: Any = fast_validator(schema)
        except Exception as exc:  # jsonschema-rs refuses an invalid schema or pattern here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidData(f"invalid JSON Schema: {_clean(first)}", where=str(path)) from None

    def is_valid(self, instance: Any) -> bool:
        try:
            return bool(self._fast.is_valid(instance))
        except (ValueError, TypeError, OverflowError):
            return False  # not a JSON value (a non-string key...): errors() says so

    def errors(self, instance: Any, prefix: str) -> list[str]:
        """Human-readable errors, in schema order: JSON path, what is wrong, what is expected."""
        out: list[str] = []
        total = 0
        try:
            for e in self._fast.iter_errors(instance):
                total += 1
                if total <= MAX_REPORTED_ERRORS:
                    out.append(self._line(e, prefix))
                elif total >= _MAX_COUNTED_ERRORS:
                    break
        except (ValueError, TypeError, OverflowError) as exc:
            return [f"{prefix}: not a JSON value: {_clean(str(exc))}"]
        if total > MAX_REPORTED_ERRORS:
            more = f"{total - MAX_REPORTED_ERRORS}{'+' if total >= _MAX_COUNTED_ERRORS else ''}"
            out.append(f"... and {more} more")
        return out

    def _line(self, e: Any, prefix: str) -> str:
        keyword = e.kind.name
        # jsonschema-rs abbreviates an enum's options ("or 2 other candidates"): list them.
        message = f"{_json(e.instance)} is not one of {_json(e.kind.options)}" if keyword == "enum" else e.message
        line = f"{json_path(e.instance_path, prefix)}: {message}"
        if keyword not in _SELF_EXPLAINING:
            rule = _at(self.schema, e.schema_path)
            if rule is not _NOTHING:
                line += f" (expected {keyword}: {_json(rule)})"
        return _clean(line)


def _at(schema: Any, pointer: Iterable[Any]) -> Any:
    """The value at ``pointer`` (a list of keys and indexes) in ``schema``, or _NOTHING."""
    node = schema
    for part in pointer:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _NOTHING
    return node


def _json(value: Any, limit: int = 120) -> str:
    try:
        from .stdjson import dumps

        text = dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clean(line: str) -> str:
    """One printable line of bounded length (instances and keys can be long or hold escapes)."""
    line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)
    if len(line) > _MAX_LINE:
        line = line[: _MAX_LINE - 100] + " ... " + line[-95:]
    return line


class SchemaRegistry:
    """Finds, loads (lazily, once) and applies schemas. Not thread-hostile: loads are idempotent.

    A type has one or more versions (``<dir>/<type>/<n>.json``, see
    :mod:`poetctl.schemafiles`); without ``version`` the methods use the newest.
    """

    def __init__(self, extra_paths: Sequence[Path] = ()) -> None:
        self.builtin = builtin_dir()
        self.extra_paths = [Path(p) for p in extra_paths]
        self._raw: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, _Compiled] = {}  # "type" (newest) and "type/n" -> compiled schema
        self._is_valid: dict[str, Any] = {}  # the same keys -> the fast validator's is_valid (hot path)
        self._versions: dict[str, dict[int, Path]] = {}
        self._provers: dict[str, Callable[[Any], bool] | None] = {}  # "type/n" -> schemaproof's prover
        self._proofs_left = PROOF_BUDGET

    # -- lookup -------------------------------------------------------------
    def versions(self, event_type: str) -> dict[int, Path]:
        """Version -> schema file of ``event_type``, ascending; {} if unregistered.

        A type comes whole from the first directory defining it (built-ins first):
        a user directory may add types, not replace or extend built-in ones.
        """
        found = self._versions.get(event_type)
        if found is None:
            check_type(event_type)
            found = {}
            for d in (self.builtin, *self.extra_paths):
                if defines(d, event_type):
                    found = versions_in(d, event_type)
                    break
            self._versions[event_type] = found
        return found

    def newest(self, event_type: str, where: str | None = None) -> int:
        """The newest schema version of ``event_type``; raises :class:`UnknownType`."""
        found = self.versions(event_type)
        if not found:
            raise self._unknown(event_type, where)
        return next(reversed(found))

    def path_for(self, event_type: str, version: int | None = None) -> Path | None:
        """The schema file of ``event_type`` (the newest version unless ``version``); None if there is none."""
        found = self.versions(event_type)
        if not found:
            return None
        return found.get(version if version is not None else next(reversed(found)))

    def types(self) -> dict[str, Path]:
        """Every registered type and the schema file of its newest version (built-ins win over user dirs)."""
        names: set[str] = set()
        for d in (self.builtin, *self.extra_paths):
            names.update(types_in(d))
        found: dict[str, Path] = {}
        for t in sorted(names):
            path = self.path_for(t)
            if path is not None:
                found[t] = path
        return found

    def _load(self, name: str, path: Path | None, where: str | None = None) -> dict[str, Any]:
        """The schema's JSON, read once; nothing is compiled or followed (``schemas show`` uses it)."""
        schema = self._raw.get(name)
        if schema is not None:
            return schema
        if path is None:
            raise self._unknown(name, where)
        try:
            from .stdjson import loads

            loaded = loads(path.read_bytes())
        except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise InvalidData(f"cannot load schema: {exc}", where=str(path)) from None
        if not isinstance(loaded, dict):
            raise InvalidData("a schema must be a JSON object", where=str(path))
        self._raw[name] = loaded
        return loaded

    def _compiled(self, name: str, path: Path | None, where: str | None = None) -> _Compiled:
        c = self._cache.get(name)
        if c is not None:
            return c
        schema = self._load(name, path, where)
        assert path is not None  # _load raised otherwise
        c = self._cache[name] = _Compiled(schema, path)
        self._is_valid[name] = c._fast.is_valid
        return c

    def _resolve(self, event_type: str, version: int | None, where: str | None) -> tuple[int, Path]:
        found = self.versions(event_type)
        if not found:
            raise self._unknown(event_type, where)
        n = next(reversed(found)) if version is None else check_version(version, where)
        path = found.get(n)
        if path is None:
            raise InvalidData(
                f"{event_type} has no schema version {n}; known versions: {', '.join(map(str, found))}",
                where=where,
            )
        return n, path

    def _version(self, event_type: str, version: int | None, where: str | None = None) -> _Compiled:
        """The compiled schema of one version (the newest when None), cached under both keys."""
        key = event_type if version is None else f"{event_type}/{version}"
        c = self._cache.get(key)
        if c is None:
            n, path = self._resolve(event_type, version, where)
            c = self._compiled(f"{event_type}/{n}", path, where)
            self._cache[key] = c
            self._is_valid[key] = c._fast.is_valid
        return c

    def payload_validator(self, event_type: str, version: int) -> Callable[[Any], bool]:
        """The fast ``is_valid`` of one schema version (it may raise ValueError for a non-JSON value).

        Its True is :meth:`validate_payload`'s verdict; on False or ValueError ask
        :meth:`validate_payload`, which words the problem. While the registry's
        proof budget lasts and jsonschema-rs is not compiled for the version,
        payloads the pre-validator proves valid do not compile it.
        """
        c = self._cache.get(f"{event_type}/{version}")
        if c is not None or self._proofs_left <= 0:
            c = c or self._version(event_type, version)
            fast: Callable[[Any], bool] = c._fast.is_valid
            return fast
        self._resolve(event_type, version, None)  # an unknown type or version raises now, as before
        compiled: Callable[[Any], bool] | None = None

        def is_valid(payload: Any) -> bool:
            nonlocal compiled
            if compiled is None:
                if self._proven(event_type, version, payload):
                    return True
                compiled = self._version(event_type, version)._fast.is_valid
            return compiled(payload)

        return is_valid

    def _proven(self, event_type: str, version: int | None, payload: Any, where: str | None = None) -> bool:
        """True if :mod:`poetctl.schemaproof` proves ``payload`` valid (within the budget); False: cannot tell.

        Without ``version``, against the newest (validate_payload's first try).
        """
        if self._proofs_left <= 0:
            return False
        n, path = self._resolve(event_type, version, where)
        key = f"{event_type}/{n}"
        if key in self._provers:
            prove = self._provers[key]
        else:
            from .schemaproof import prover

            prove = self._provers[key] = prover(self._load(key, path, where))
        if prove is None or not prove(payload):
            return False
        self._proofs_left -= 1
        return True

    def _unknown(self, event_type: str, where: str | None = None) -> UnknownType:
        target = self.extra_paths[0] if self.extra_paths else Path("schemas/custom")
        return UnknownType(
            f"unknown event type {event_type!r}: no schema {event_type}/<n>.json in "
            f"{', '.join(str(d) for d in (self.builtin, *self.extra_paths))}. To register it, "
            f"write a JSON Schema (Draft 2020-12) of its payload to {target}/{event_type}/1.json "
            "and list that directory in poet.toml (event_schemas.paths) or POET_SCHEMA_PATH; "
            "'poetctl schemas' lists the known types",
            where=where,
        )

    def schema(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        """The payload schema of ``event_type`` as written (not compiled); raises :class:`UnknownType`."""
        n, path = self._resolve(event_type, version, None)
        return self._load(f"{event_type}/{n}", path)

    def topic_template(self, event_type: str) -> str | None:
        """``x-poet-topic`` of a user schema's newest version (None for built-ins and when absent)."""
        t = self.schema(event_type).get("x-poet-topic")
        return t if isinstance(t, str) else None

    # -- validation ---------------------------------------------------------
    def validate_payload(
        self,
        event_type: str,
        payload: Any,
        where: str | None = None,
        prefix: str = "$",
        version: int | None = None,
    ) -> None:
        """Raise :class:`InvalidData` (all messages, JSON paths) unless ``payload`` is valid.

        Against ``version`` when given. Without it (a reader of stored events that
        does not look at ``metadata.schema_version``), the payload must match one
        of the type's versions: the newest is tried first and named in the error.
        """
        fast = self._is_valid.get(event_type if version is None else f"{event_type}/{version}")
        try:
            if fast is not None and fast(payload):
                return
        except ValueError:
            pass  # not a JSON value (a non-string key): c.is_valid and c.errors below say so
        if fast is None and self._proven(event_type, version, payload, where):
            return
        c = self._version(event_type, version, where)
        if c.is_valid(payload):
            return
        older = ""
        if version is None and len(self.versions(event_type)) > 1:
            if any(self._version(event_type, n, where).is_valid(payload) for n in self.versions(event_type)):
                return
            older = " (nor any older version)"
        raise InvalidData(
            f"{event_type} payload does not match {schema_label(c.path)}{older}:\n  "
            + "\n  ".join(c.errors(payload, prefix)),
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

    def check_known(self, event_type: str, where: str | None = None, version: int | None = None) -> None:
        """Raise :class:`UnknownType` unless a schema (of ``version``, if given) is registered for ``event_type``."""
        if (event_type if version is None else f"{event_type}/{version}") not in self._cache:
            self._version(event_type, version, where)


def schema_label(path: Path) -> str:
    """``drift.detected/2.json`` for a versioned schema file, the file name for a flat one."""
    return f"{path.parent.name}/{path.name}" if VERSION_NAME_RE.fullmatch(path.name) else path.name
