"""orjson's bytes from the standard library's ``json``, for commands that start, read a little and exit.

``import orjson`` costs more than a short command's whole work: at start it
imports dataclasses (and with it inspect, ast, dis, tokenize), uuid (and
platform), enum and datetime. ``status``, ``tail -n 10`` and ``correlate``
read or print a handful of documents, so they use ``json`` (imported anyway)
where it provably gives orjson's exact bytes, and orjson everywhere else.

Where the two differ, and how each case is sent to orjson:

* floats in exponent form (``1e-05``/``1e+16`` here, ``1e-5``/``1e16`` there):
  any ``<digit>e+<digits>`` or ``<digit>e-<digits>`` before a delimiter
  (``,]}``, white space, the end) in the output; a string holding such text
  is sent to orjson too, which gives the same bytes, only slower;
* integers beyond 64 bits (orjson refuses them; read as floats): any run of
  19 digits or more before a delimiter, in range or not;
* NaN and Infinity (orjson writes null; ``allow_nan=False`` refuses them);
* lone surrogates (orjson refuses them; encoding to UTF-8 fails here);
* non-string keys (``json`` turns them into strings, orjson refuses them);
* any other type (``json`` refuses it; orjson may know it: datetime, UUID).

Everything else — strings and their escapes, key order (sorted by code
point), integers, non-exponent floats, ``true``/``false``/``null``, compact
and 2-space indented layouts — is byte-identical (tests/test_stdjson.py holds
both libraries to that). Once orjson is imported anyway (the daemon, emit),
it is used directly: faster, and the same bytes.
"""

from __future__ import annotations

import json
import sys

from .ids import lazy_pattern

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Output that orjson might write differently (see the module docstring): a number in exponent
# form or of 19 digits or more. A number ends at a delimiter; text inside a string that looks
# like one matches too (only slower), but an id such as a UUID ("...9e-8a4d-...") does not.
_MAY_DIFFER = lazy_pattern(r"[0-9](?:e[+-][0-9]+|[0-9]{18,})(?=[,\]}\s]|$)")
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_SORTED = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)
_INDENTED = json.JSONEncoder(ensure_ascii=False, indent=2, allow_nan=False)
_INDENTED_SORTED = json.JSONEncoder(ensure_ascii=False, indent=2, allow_nan=False, sort_keys=True)


def orjson_loaded() -> bool:
    """True once some module imported orjson: then it is the cheaper way to any JSON."""
    return "orjson" in sys.modules


def encode(text: str) -> bytes | None:
    """``text`` (the standard library's JSON) as UTF-8, or None where orjson's bytes might differ."""
    if _MAY_DIFFER.search(text) is not None:
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: orjson refuses it
        return None


def canonical(doc: dict[str, Any]) -> bytes | None:
    """``orjson.dumps(doc, option=OPT_SORT_KEYS)`` for a document ``json.loads`` made, or None.

    Only for what the standard parser returned: every key is a string and
    every value a JSON type, so only the cases of :func:`encode` remain.
    """
    try:
        return encode(_SORTED.encode(doc))
    except (ValueError, RecursionError):  # NaN or Infinity (json reads them; orjson does not)
        return None


def dumps(obj: Any, *, indent: bool = False, sort_keys: bool = False) -> bytes:
    """``orjson.dumps(obj)`` (with ``OPT_INDENT_2``, ``OPT_SORT_KEYS`` as asked): same bytes, same errors."""
    data = lean_dumps(obj, indent=indent, sort_keys=sort_keys)
    if data is not None:
        return data
    import orjson

    option = (orjson.OPT_INDENT_2 if indent else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    return orjson.dumps(obj, option=option) if option else orjson.dumps(obj)


def lean_dumps(obj: Any, *, indent: bool = False, sort_keys: bool = False) -> bytes | None:
    """What :func:`dumps` returns, made without orjson; None where orjson must decide or is loaded."""
    if orjson_loaded() or not _str_keys(obj):
        return None
    encoder = _INDENTED_SORTED if indent and sort_keys else _INDENTED if indent else _SORTED if sort_keys else _COMPACT
    try:
        text = encoder.encode(obj)
    except (TypeError, ValueError, RecursionError):
        return None  # a type or value json refuses: orjson decides (and words any error)
    return encode(text)


def loads(data: bytes) -> Any:
    """``orjson.loads(data)``: the same value, or orjson's own error."""
    lean = lean_loads(data)
    if lean is not None:
        return lean[0]
    import orjson

    return orjson.loads(data)


def lean_loads(data: bytes) -> tuple[Any, bytes] | None:
    """``(orjson.loads(data), orjson.dumps(that))`` made without orjson; None where orjson must decide.

    The standard parser's value is kept only when it writes back as orjson
    would (:func:`encode`): then no number, string or key was read differently
    (orjson reads over-wide integers as floats and refuses NaN, Infinity, lone
    surrogates, a byte-order mark and other encodings than UTF-8). None too
    once orjson is loaded (it is faster).
    """
    if orjson_loaded():
        return None
    try:
        doc = json.loads(data.decode())
        again = encode(_COMPACT.encode(doc))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return None if again is None else (doc, again)


def _str_keys(obj: Any) -> bool:
    """True if ``obj`` is plain dicts (string keys), lists and tuples, nested no deeper than orjson writes."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is dict:
            for k in node:
                if type(k) is not str:
                    return False
            children: Any = node.values()
        elif kind is list or kind is tuple:
            children = node
        elif isinstance(node, (dict, list, tuple)):  # a subclass: orjson decides
            return False
        else:
            continue
        if depth > _ORJSON_DEPTH:
            return False
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list, tuple)))
    return True


# orjson refuses containers nested deeper than this; json's limit is the recursion limit.
_ORJSON_DEPTH = 254
