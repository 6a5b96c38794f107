"""The limits every JSON input goes through: size, UTF-8, duplicate keys, 64-bit integers, NaN, depth.

Apart from :mod:`poetctl.event` (the envelope and its checksum), which re-exports
:func:`parse_json`, :func:`check_depth` and ``MAX_DEPTH`` under their old names.
"""

from __future__ import annotations

import sys

from .errors import InvalidData
from .strictjson import INT_MAX, INT_MIN, find_inexact, path_part, surely_exact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 64


def parse_json(data: bytes, where: str | None = None, max_bytes: int | None = None) -> Any:
    """Parse JSON bytes with the limits every input goes through.

    Raises :class:`InvalidData` for oversize input, invalid UTF-8, invalid JSON,
    nesting deeper than :data:`MAX_DEPTH`, a duplicate key and an integer beyond
    64 bits (which orjson would silently resolve: last key wins, integer becomes a
    float); the message names ``where`` and the JSON path.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidData(
            f"input is {len(data)} bytes; the limit is {max_bytes} bytes (max_event_bytes)",
            where=where,
        )
    if "orjson" not in sys.modules:  # a one-event command: orjson's value and bytes without importing it
        from .stdjson import lean_loads

        lean = lean_loads(data)
        if lean is not None:
            obj, again = lean
            check_depth(obj, where)
            if not surely_exact(data, again):
                problem = find_inexact(data)
                if problem is not None:
                    raise InvalidData(problem, where=where)
            return obj
    import orjson

    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "utf-8" in msg.lower() or "surrogate" in msg.lower():
            raise InvalidData(f"not valid UTF-8: {msg}", where=where) from None
        if "recursion" in msg.lower() or "depth limit" in msg.lower():
            raise InvalidData(f"JSON nested deeper than {MAX_DEPTH} levels", where=where) from None
        # orjson gives up on an integer too wide even for a float; the slow parse names its path.
        problem = find_inexact(data) if "infinity" in msg else None
        raise InvalidData(problem or f"invalid JSON: {msg}", where=where) from None
    # Depth first: re-serialising below (and the standard parser in find_inexact) recurse.
    check_depth(obj, where)
    if not surely_exact(data, orjson.dumps(obj)):
        problem = find_inexact(data)
        if problem is not None:
            raise InvalidData(problem, where=where)
    return obj


def check_depth(obj: Any, where: str | None = None, prefix: str = "$", limit: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidData` unless ``obj`` is JSON that poetctl stores exactly.

    That is: containers nest at most ``limit`` levels, object keys are strings,
    floats are finite (orjson writes NaN and Infinity as null) and integers fit in
    64 bits (orjson cannot write larger ones). Iterative, so any depth is safe to
    check; the message names the JSON path (under ``prefix``) of the first problem.
    """
    # Exact type checks first: JSON documents hold only these types, and this runs
    # for every event on the emit path. The slow walk below only words the error.
    if type(obj) is not dict and type(obj) is not list:
        problem = first_problem(obj, prefix, limit)  # a scalar or a tuple: rare, the slow walk decides
        if problem is not None:
            raise InvalidData(problem, where=where)
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            children: Any = node.values()
            if not all(type(k) is str for k in node):
                raise InvalidData(_problem(obj, prefix, limit), where=where)
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is dict or kind is list or kind is tuple:
                if depth >= limit:
                    raise InvalidData(_problem(obj, prefix, limit), where=where)
                stack.append((child, depth + 1))
            elif kind is str or kind is bool or child is None:
                continue
            elif _bad_number(child):
                raise InvalidData(_problem(obj, prefix, limit), where=where)


def _bad_number(value: Any) -> bool:
    """True for NaN, +-Infinity and integers outside the 64-bit range (bools are fine)."""
    if isinstance(value, float):
        return value - value != 0.0  # NaN - NaN and inf - inf are NaN
    if isinstance(value, int) and not isinstance(value, bool):
        return not INT_MIN <= value <= INT_MAX
    return False


def _problem(obj: Any, prefix: str, limit: int) -> str:
    return first_problem(obj, prefix, limit) or f"JSON nested deeper than {MAX_DEPTH} levels"


_NO_KEY = object()


def first_problem(obj: Any, prefix: str, limit: int) -> str | None:
    """Describe the first thing :func:`check_depth` refuses, with its JSON path (slow: errors only)."""
    pending: list[tuple[Any, str, int]] = [(obj, prefix, 0)]  # (value, path, depth of its container)
    while pending:
        value, path, outer = pending.pop()
        kind = type(value)
        if kind is dict or kind is list or kind is tuple:
            if outer >= limit:
                return f"{_short(path)}: JSON nested deeper than {MAX_DEPTH} levels; expected a flatter document"
            if kind is dict:
                bad_key = next((k for k in value if type(k) is not str), _NO_KEY)
                if bad_key is not _NO_KEY:
                    return f"{_short(path)}: key {bad_key!r} is not a string; expected string keys (JSON objects)"
                items = [(v, path + path_part(k), outer + 1) for k, v in value.items()]
            else:
                items = [(v, f"{path}[{i}]", outer + 1) for i, v in enumerate(value)]
            pending.extend(reversed(items))
        elif _bad_number(value):
            if isinstance(value, float):
                name = "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
                return f"{_short(path)}: {name} is not a JSON number; expected a finite number"
            return f"{_short(path)}: integer {value} does not fit in 64 bits; expected -2**63 to 2**64-1 (or a string)"
    return None


def _short(path: str) -> str:
    """A JSON path cut to a readable length (a deep one is thousands of characters)."""
    return path if len(path) <= 120 else path[:100] + "..." + path[-17:]
