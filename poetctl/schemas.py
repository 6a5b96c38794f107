"""Schema registry over ``schemas/`` and user schema directories.

One file per type: ``<type>.json`` holds the JSON Schema (Draft 2020-12) of
that type's *payload*; ``envelope.json`` holds the envelope's. Built-in
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

import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import orjson

from .errors import InvalidData, UnknownType
from .event import check_type
from .strictjson import path_part

MAX_REPORTED_ERRORS = 5
_MAX_COUNTED_ERRORS = 1000
_MAX_LINE = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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


# envelope.json bounds timestamp and expires_at to 2000-01-01 .. 2200-01-01 UTC (Unix seconds):
# readers turn them into datetimes, which end at year 9999, and nothing real lies outside.
TIME_MIN = 946684800
TIME_MAX = 7258118400


def _sane_time(v: Any) -> bool:
    return (type(v) is float or type(v) is int) and TIME_MIN <= v <= TIME_MAX


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
    if not _sane_time(get("timestamp")) or type(get("payload")) is not dict:
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
    return "expires_at" not in d or _sane_time(d["expires_at"])


# -- what a schema may refer to -------------------------------------------------------------
# The drafts jsonschema-rs knows (their meta-schemas are built in, never fetched).
KNOWN_DRAFTS = frozenset(
    {
        "http://json-schema.org/draft-04/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema",
    }
)
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def check_references(schema: dict[str, Any], path: Path) -> None:
    """Raise :class:`InvalidData` unless every reference in ``schema`` resolves inside it.

    Allowed: ``#...`` (a JSON pointer or anchor in the same file) and URIs that resolve
    to the file's own ``$id`` or an ``$id`` embedded in it. Anything else - ``http://``,
    ``file://``, a relative name like ``other.json`` - would make a validator fetch or
    read it. ``$schema`` must name a draft (``KNOWN_DRAFTS``). Every string under one
    of these keys is checked, even inside ``const`` or ``examples``: refusing such an
    odd schema is safer than guessing which strings a validator will follow.
    """
    root_id = schema.get("$id")
    base = urldefrag(root_id).url if isinstance(root_id, str) else ""
    local = {base}
    refs: list[tuple[str, str, str]] = []  # (reference, base it resolves against, JSON pointer)
    stack: list[tuple[Any, str, str]] = [(schema, base, "")]
    while stack:
        node, base, pointer = stack.pop()
        if isinstance(node, list):
            stack.extend((v, base, f"{pointer}/{i}") for i, v in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        nid = node.get("$id")
        if isinstance(nid, str):
            base = urldefrag(urljoin(base, nid)).url
            local.add(base)
        for k, v in node.items():
            where = f"{pointer}/{k}"
            if isinstance(v, str) and k in _REF_KEYWORDS:
                refs.append((v, base, where))
            elif isinstance(v, str) and k == "$schema" and urldefrag(v).url not in KNOWN_DRAFTS:
                raise InvalidData(
                    f"$schema {v!r} at #{where} is not a draft poetctl knows; expected one of "
                    f"{', '.join(sorted(KNOWN_DRAFTS))} (poetctl never fetches meta-schemas)",
                    where=str(path),
                )
            elif isinstance(v, dict | list):
                stack.append((v, base, where))
    for ref, ref_base, where in refs:
        if urldefrag(urljoin(ref_base, ref)).url not in local:
            raise InvalidData(
                f"{ref_kind(where)} {ref!r} at #{where} points outside this schema file; poetctl never "
                "fetches or reads other schemas: refer only inside the file ('#/$defs/name', '#anchor' "
                "or an $id embedded in it)",
                where=str(path),
            )


def ref_kind(pointer: str) -> str:
    """The keyword at the end of a JSON pointer (``$ref``, ``$dynamicRef``...)."""
    return pointer.rsplit("/", 1)[-1]


def _no_retrieval(uri: str) -> Any:
    # Only reached if check_references let a reference through; fail rather than fetch.
    raise ValueError(f"poetctl never fetches schemas ({uri})")


def fast_validator(schema: dict[str, Any]) -> Any:
    """jsonschema-rs's validator for ``schema``, as poetctl configures it (no retrieval, linear regex)."""
    import jsonschema_rs  # tens of ms to import: only commands that validate pay for it

    return jsonschema_rs.validator_for(schema, retriever=_no_retrieval, pattern_options=jsonschema_rs.RegexOptions())


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
        text = orjson.dumps(value).decode()
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
    """Finds, loads (lazily, once) and applies schemas. Not thread-hostile: loads are idempotent."""

    def __init__(self, extra_paths: Sequence[Path] = ()) -> None:
        self.builtin = builtin_dir()
        self.extra_paths = [Path(p) for p in extra_paths]
        self._raw: dict[str, dict[str, Any]] = {}
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

    def _load(self, name: str, path: Path | None, where: str | None = None) -> dict[str, Any]:
        """The schema's JSON, read once; nothing is compiled or followed (``schemas show`` uses it)."""
        schema = self._raw.get(name)
        if schema is not None:
            return schema
        if path is None:
            raise self._unknown(name, where)
        try:
            loaded = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
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
        """The payload schema of ``event_type`` as written (not compiled); raises :class:`UnknownType`."""
        return self._raw.get(event_type) or self._load(event_type, self.path_for(event_type))

    def topic_template(self, event_type: str) -> str | None:
        """``x-poet-topic`` of a user schema (None for built-ins and when absent)."""
        t = self.schema(event_type).get("x-poet-topic")
        return t if isinstance(t, str) else None

    # -- validation ---------------------------------------------------------
    def validate_payload(self, event_type: str, payload: Any, where: str | None = None, prefix: str = "$") -> None:
        """Raise :class:`InvalidData` (all messages, JSON paths) unless ``payload`` is valid."""
        fast = self._is_valid.get(event_type)
        try:
            if fast is not None and fast(payload):
                return
        except ValueError:
            pass  # not a JSON value (a non-string key): c.is_valid and c.errors below say so
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
