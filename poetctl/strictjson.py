"""Exact JSON: duplicate keys and integers beyond 64 bits, found cheaply and named precisely.

orjson, which parses everything poetctl reads, keeps the last of duplicate keys and
reads integers outside [-2**63, 2**64-1] as floats, both silently. poetctl refuses
such documents (exit 65 on input, ``bad_json`` on disk) rather than store something
other than what was written. Naming the JSON path needs a second, slower parse, so
callers first run the byte test :func:`surely_exact` and parse again with
:func:`find_inexact` only when that test cannot vouch for the bytes.
"""

from __future__ import annotations

import json

from .ids import lazy_pattern

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# orjson reads and writes integers exactly in this range; beyond it they become floats on
# reading, and writing raises. Everything poetctl accepts therefore round-trips unchanged.
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
_MAX_INT_DIGITS = 20  # len(str(INT_MAX)); longer literals are out of range without converting them
_NAME = lazy_pattern(r"[A-Za-z_][A-Za-z0-9_-]*")
_MAX_SHOWN = 60


def surely_exact(data: bytes, reserialised: bytes, omitted_colons: int = 0) -> bool:
    """True only if ``data`` certainly holds no duplicate key and no integer beyond 64 bits.

    ``reserialised`` is ``orjson.dumps`` of what ``orjson.loads`` made of ``data`` (any key
    order), possibly without members the caller took out first; ``omitted_colons`` is the
    number of colons those members held in ``data``. False means "ask :func:`find_inexact`".

    Why it is sound:

    * Outside strings, JSON has colons only as key separators, and orjson writes every
      colon inside a string as a colon. Without duplicates, ``data`` and its
      re-serialisation therefore hold as many colons, unless ``data`` spells one as an
      escape (``\\u003a``), which sends us to the slow path. A duplicate member is missing
      from the re-serialisation, separator included: it has fewer colons.
    * An integer outside the 64-bit range is read as a float of magnitude >= 2**63, and
      orjson writes every float of magnitude >= 1e16 in exponent form (``1.8e+19``): the
      re-serialisation holds ``e+``. (tests/test_strictjson.py holds orjson to that.)

    Costs two byte counts; the substring searches run only when a one-byte search (memchr,
    far cheaper) finds a ``+`` or a backslash at all, which most events have neither of.
    """
    if b"+" in reserialised and b"e+" in reserialised:
        return False
    if b"\\" in data and b"\\u003" in data:
        return False
    return data.count(b":") == reserialised.count(b":") + omitted_colons


class _Repeated(dict[str, object]):
    """An object in which ``key`` occurs more than once (the parse keeps the last, like orjson)."""

    key: str = ""


class _Wide:
    """An integer literal outside [INT_MIN, INT_MAX], kept as its text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    out = _Repeated(d)
    for k, _ in pairs:
        if k in seen:
            out.key = k
            break
        seen.add(k)
    return out


def _integer(text: str) -> int | _Wide:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        return _Wide(text)
    value = int(text)
    return value if INT_MIN <= value <= INT_MAX else _Wide(text)


def path_part(key: str | int) -> str:
    """One step of a JSON path: ``[3]``, ``.name``, or ``["odd key"]``."""
    if isinstance(key, int):
        return f"[{key}]"
    return f".{key}" if _NAME.fullmatch(key) else f"[{shown(key)}]"


def shown(value: str) -> str:
    """``value`` as a JSON string for a message: control characters escaped, long ones cut."""
    text = json.dumps(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + '..."'


def find_inexact(data: bytes, prefix: str = "$") -> str | None:
    """Parse ``data`` again, slowly, and describe its first duplicate key or over-wide integer.

    Returns ``"<JSON path>: <what is wrong>; <what is expected>"``, or None when the
    document has neither. Only call it on bytes orjson accepted and whose depth was
    checked (the standard library's parser recurses).
    """
    try:
        doc = json.loads(data, object_pairs_hook=_object, parse_int=_integer)
    except (ValueError, RecursionError):
        return None  # orjson accepted it; nothing more precise to say
    stack: list[tuple[Any, str]] = [(doc, prefix)]
    while stack:  # depth-first in document order, so the first problem in the text is named
        node, path = stack.pop()
        if type(node) is _Repeated:
            return f"{path}: duplicate key {shown(node.key)}; expected each key once per object"
        if type(node) is _Wide:
            digits = node.text if len(node.text) <= 40 else node.text[:37] + "..."
            return f"{path}: integer {digits} does not fit in 64 bits; expected -2**63 to 2**64-1 (or a string)"
        if isinstance(node, dict):
            stack.extend((v, path + path_part(k)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None
