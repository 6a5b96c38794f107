"""Proves common payloads valid without jsonschema-rs, so a one-event ``poetctl emit`` need not import it.

Importing and compiling jsonschema-rs costs a short command more than all
its other work (it pulls in email.utils, socket, decimal). :func:`prover`
compiles a schema into a small Python check for the keyword subset the
shipped schemas use, and the check answers only "proven valid" (True) or
"cannot tell" (False): it never says invalid. On False the caller asks
jsonschema-rs, which gives the verdict and the message, so exit codes and
messages are unchanged. It must never answer True where jsonschema-rs would
refuse, so it is conservative everywhere (tests/test_schemaproof.py checks
it against jsonschema-rs over every shipped schema and mutated payloads):

* a schema with any keyword outside the subset (``$ref``, ``format``,
  ``patternProperties``, ``allOf``, ``multipleOf``, ...), a keyword value
  the meta-schema might refuse, or another draft than 2020-12 gets no
  prover at all (None);
* values must be exactly what JSON parsing gives (dict with str keys, list,
  str without lone surrogates, int of at most 53 bits, finite float, bool,
  None) at most :data:`MAX_DEPTH` deep; ``integer`` accepts only ints;
  ``enum``/``const`` only strings;
* ``pattern`` only in a small regular subset (anchored ``^...$``, literal
  characters, classes, ``\\.``-style and ``\\uXXXX`` escapes, groups,
  quantifiers not nested, alternation only in unquantified groups), where Python's ``re``
  and the Rust ``regex`` engine agree; and only where the match's
  backtracking is provably small (else: cannot tell).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from .event import MAX_DEPTH  # deeper payloads are left to the full check (which words the problem)

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    Check = Callable[[Any, int], bool]  # (value, depth) -> proven valid

_BIG = 1 << 53  # ints beyond float precision: comparisons might differ, leave them to jsonschema-rs
_INF = float("inf")
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_ANNOTATIONS = {"title": str, "description": str, "$comment": str, "examples": list}
_ANY_VALUE = ("default",)
_FLAGS = ("deprecated", "readOnly", "writeOnly")
_TYPES = {"string", "integer", "number", "object", "array", "boolean", "null"}
# A plain absolute URL without fragment or query (checked without a regex: start-up is the point here).
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~/-:")
# One token of the pattern subset: a class, an escape, a group bracket, a quantifier, a literal.
# Compiled on the first pattern met (system.health has none), not at import.
_TOKEN_RE = (
    r"\[\^?(?:[A-Za-z0-9 _.,:;/@#%=+*!?<>'\"-]|\\[.\-\]\[\\^]|\\u[0-9a-fA-F]{4})+\]"
    r"|\\[.+*?(){}\[\]|^$\\]|\\u[0-9a-fA-F]{4}"
    r"|\(\?:|[()|]"
    r"|[*+?]|\{[0-9]{1,3}(?:,[0-9]{0,3})?\}"
    r"|[A-Za-z0-9 _,:;/@#%&=<>~'\"-]"
)
_MAX_BACKTRACK = 200_000  # bound on backtracking paths x string length for a pattern check


class _Unsupported(Exception):
    """The schema uses something outside the subset: no prover."""


def prover(schema: Any) -> Callable[[Any], bool] | None:
    """A function proving payloads valid against ``schema`` (True = surely valid), or None if unsupported."""
    if not isinstance(schema, dict):
        return None
    if schema.get("$schema", _DRAFT) != _DRAFT:
        return None
    sid = schema.get("$id")
    if sid is not None and (type(sid) is not str or not _plain_url(sid)):
        return None
    rest = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
    try:
        check = _compile(rest)
    except _Unsupported:
        return None

    def proven(payload: Any) -> bool:
        try:
            return check(payload, 0)
        except RecursionError:
            return False

    return proven


def _compile(node: Any) -> Check:
    if node is True:
        return _plain
    if node is False:
        return _never
    if type(node) is not dict:
        raise _Unsupported
    checks: list[Check] = []
    string: list[Callable[[str], bool]] = []
    number: list[Callable[[Any], bool]] = []
    props: dict[str, Check] = {}
    extra: Check = _plain
    required: list[str] = []
    obj_size: list[int | None] = [None, None]
    items: Check = _plain
    arr_size: list[int | None] = [None, None]
    types: set[str] | None = None
    for key, value in node.items():
        if key in _ANNOTATIONS:
            if not isinstance(value, _ANNOTATIONS[key]):
                raise _Unsupported
        elif key in _ANY_VALUE or key.startswith("x-"):
            pass
        elif key in _FLAGS:
            if type(value) is not bool:
                raise _Unsupported
        elif key == "type":
            names = [value] if type(value) is str else value
            if type(names) is not list or not names or len(set(names)) != len(names) or not set(names) <= _TYPES:
                raise _Unsupported
            types = set(names)
        elif key in ("enum", "const"):
            options = value if key == "enum" else [value]
            if type(options) is not list or not options or any(type(o) is not str for o in options):
                raise _Unsupported
            checks.append(_one_of(frozenset(options)))
        elif key in ("minLength", "maxLength"):
            n = _count(value)
            string.append(_length(key, n))
        elif key == "pattern":
            string.append(_pattern(value))
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            number.append(_bound(key, value))
        elif key == "required":
            if type(value) is not list or any(type(r) is not str for r in value) or len(set(value)) != len(value):
                raise _Unsupported
            required = value
        elif key == "properties":
            if type(value) is not dict:
                raise _Unsupported
            props = {k: _compile(v) for k, v in value.items()}
        elif key == "additionalProperties":
            extra = _compile(value)
        elif key in ("minProperties", "maxProperties"):
            obj_size[key == "maxProperties"] = _count(value)
        elif key == "items":
            items = _compile(value)
        elif key in ("minItems", "maxItems"):
            arr_size[key == "maxItems"] = _count(value)
        elif key == "uniqueItems" and value is False:
            pass
        else:
            raise _Unsupported
    return _node(types, checks, string, number, props, extra, required, obj_size, items, arr_size)


def _node(
    types: set[str] | None,
    checks: list[Check],
    string: list[Callable[[str], bool]],
    number: list[Callable[[Any], bool]],
    props: dict[str, Check],
    extra: Check,
    required: list[str],
    obj_size: list[int | None],
    items: Check,
    arr_size: list[int | None],
) -> Check:
    lo_keys, hi_keys = obj_size
    lo_items, hi_items = arr_size

    def check(v: Any, depth: int) -> bool:
        t = type(v)
        if t is dict:
            if types is not None and "object" not in types:
                return False
            if depth >= MAX_DEPTH:
                return False
            for r in required:
                if r not in v:
                    return False
            if (lo_keys is not None and len(v) < lo_keys) or (hi_keys is not None and len(v) > hi_keys):
                return False
            for k, item in v.items():
                if type(k) is not str or not _text(k) or not props.get(k, extra)(item, depth + 1):
                    return False
        elif t is list:
            if (types is not None and "array" not in types) or depth >= MAX_DEPTH:
                return False
            if (lo_items is not None and len(v) < lo_items) or (hi_items is not None and len(v) > hi_items):
                return False
            for item in v:
                if not items(item, depth + 1):
                    return False
        elif t is str:
            if (types is not None and "string" not in types) or not _text(v):
                return False
            for s in string:
                if not s(v):
                    return False
        elif t is int or t is float:
            if t is int:
                if not -_BIG <= v <= _BIG or (types is not None and not types & {"integer", "number"}):
                    return False
            elif not -_INF < v < _INF or (types is not None and "number" not in types):
                return False
            for n in number:
                if not n(v):
                    return False
        elif t is bool:
            if types is not None and "boolean" not in types:
                return False
        elif v is None:
            if types is not None and "null" not in types:
                return False
        else:
            return False  # not a plain JSON value: jsonschema-rs decides (and may refuse it)
        return all(c(v, depth) for c in checks) if checks else True

    return check


def _text(s: str) -> bool:
    """True unless ``s`` holds a lone surrogate (not a JSON string jsonschema-rs can take)."""
    if s.isascii():
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _plain(v: Any, depth: int) -> bool:
    """Any JSON value (only its being plain JSON is checked)."""
    return _PLAIN(v, depth)


_PLAIN: Check = _node(None, [], [], [], {}, _plain, [], [None, None], _plain, [None, None])


def _never(v: Any, depth: int) -> bool:
    return False


def _one_of(allowed: frozenset[str]) -> Check:
    return lambda v, depth: type(v) is str and v in allowed


def _length(key: str, n: int) -> Callable[[str], bool]:
    if key == "minLength":
        return lambda s: len(s) >= n
    return lambda s: len(s) <= n


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Unsupported
    return value


def _bound(key: str, b: Any) -> Callable[[Any], bool]:
    if type(b) not in (int, float) or not -_BIG <= b <= _BIG:
        raise _Unsupported
    if key == "minimum":
        return lambda v: v >= b
    if key == "maximum":
        return lambda v: v <= b
    if key == "exclusiveMinimum":
        return lambda v: v > b
    return lambda v: v < b


def _plain_url(sid: str) -> bool:
    scheme, sep, rest = sid.partition("://")
    return sep != "" and scheme in ("http", "https") and rest != "" and ":" not in rest and set(rest) <= _ID_CHARS


@cache
def _token() -> re.Pattern[str]:
    return re.compile(_TOKEN_RE)


def _pattern(value: Any) -> Callable[[str], bool]:
    """A check of ``pattern`` for the subset (see the module docstring); raises _Unsupported otherwise."""
    if type(value) is not str or len(value) < 2 or value[0] != "^" or value[-1] != "$" or value[-2:] == "\\$":
        raise _Unsupported
    body = value[1:-1]
    pos, depth, unbounded, paths = 0, 0, 0, 1
    quantified_group = [False]  # per open group: does it hold a quantifier or a choice?
    last = ""  # the kind of the previous token: "atom", "close", "open", "quant", "bar"
    while pos < len(body):
        m = _token().match(body, pos)
        if m is None:
            raise _Unsupported
        tok = m.group()
        pos = m.end()
        if tok in ("(", "(?:"):
            depth += 1
            quantified_group.append(False)
            last = "open"
        elif tok == ")":
            if depth == 0 or last in ("open", "bar"):
                raise _Unsupported
            depth -= 1
            inner = quantified_group.pop()
            quantified_group[-1] = quantified_group[-1] or inner
            last = "close_q" if inner else "close"
        elif tok == "|":
            if depth == 0:
                raise _Unsupported  # ^a|b$ is (^a)|(b$): not a full match
            paths *= 2
            # A group holding a choice is never quantified: (a|aa)+ backtracks exponentially.
            quantified_group[-1] = True
            last = "bar"
        elif tok[0] in "*+?{":
            if last not in ("atom", "close"):
                raise _Unsupported  # a quantified quantifier or a quantified group holding one
            if tok in ("*", "+") or (tok[0] == "{" and tok.endswith(",}")):
                unbounded += 1
            else:
                lo, _, hi = tok.strip("{}").partition(",")
                top = 1 if tok == "?" else int(hi) if hi else int(lo)
                if tok != "?" and hi and int(hi) < int(lo):
                    raise _Unsupported
                paths *= top + 1
            quantified_group[-1] = True
            last = "quant"
        else:
            if tok[0] == "[" and "--" in tok:
                raise _Unsupported  # class difference in Rust's syntax, literal dashes in Python's
            last = "atom"
    if depth or unbounded > 1 or paths > _MAX_BACKTRACK:
        raise _Unsupported
    try:
        match = re.compile(body).fullmatch
    except re.error:
        raise _Unsupported from None
    limit = _MAX_BACKTRACK // paths

    def check(s: str) -> bool:
        return len(s) <= limit and match(s) is not None

    return check
