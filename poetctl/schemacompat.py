"""Compatibility of two versions of a payload schema, in Confluent Schema Registry's terms.

Confluent's modes, read for JSON payloads:

* **backward**: a consumer using NEW can read data written with OLD, i.e. every
  payload valid under OLD is valid under NEW (Confluent's default mode);
* **forward**: a consumer using OLD can read data written with NEW, i.e. every
  payload valid under NEW is valid under OLD;
* **full**: both; **breaking** (Confluent's ``NONE`` would accept it): neither.

Each difference found is a :class:`Reason` saying which direction it breaks.
The comparison walks both schemas in step (``properties`` of objects, ``items``
of arrays) and knows the keywords below; any other keyword that differs
(``pattern``, ``$ref``, ``oneOf``, ``format``...) cannot be compared here and is
reported as breaking both ways, so a "compatible" verdict is always a proven one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

BACKWARD = "backward"
FORWARD = "forward"
FULL = "full"
BREAKING = "breaking"
MODES = (BACKWARD, FORWARD, FULL, "none")

_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
# Lower bounds (raising one tightens) and upper bounds (lowering one tightens).
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
# Keywords that carry no constraint, or that this walk handles itself.
_IGNORED = frozenset(
    ("$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated", "x-poet-topic")
)
_HANDLED = frozenset(("type", "enum", "properties", "required", "additionalProperties", "items", *_LOWER, *_UPPER))


@dataclass(frozen=True, slots=True)
class Reason:
    """One difference: the rule it falls under, where, what changed, and the direction it breaks."""

    rule: str
    path: str
    detail: str
    breaks: str  # "backward" or "forward"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The strongest mode both schemas satisfy, and every reason against the others."""

    level: str
    reasons: tuple[Reason, ...]

    def satisfies(self, mode: str) -> bool:
        """True if the change is allowed under Confluent mode ``mode`` (backward, forward, full, none)."""
        if mode == "none":
            return True
        if mode == FULL:
            return self.level == FULL
        return self.level in (mode, FULL)


def check(old: dict[str, Any], new: dict[str, Any]) -> Verdict:
    """Compare payload schema ``old`` with its successor ``new``."""
    reasons = list(_compare(old, new, "$"))
    back = any(r.breaks == BACKWARD for r in reasons)
    fwd = any(r.breaks == FORWARD for r in reasons)
    level = FULL if not (back or fwd) else FORWARD if back and not fwd else BACKWARD if not back else BREAKING
    return Verdict(level, tuple(reasons))


def _compare(old: Any, new: Any, path: str) -> Iterable[Reason]:
    if old is True or old == {}:
        old = {}
    if new is True or new == {}:
        new = {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            yield from _both("schema_changed", path, f"{_short(old)} became {_short(new)}")
        return
    yield from _types(old.get("type"), new.get("type"), path)
    yield from _enums(old, new, path)
    yield from _bounds(old, new, path)
    yield from _objects(old, new, path)
    if "items" in old or "items" in new:
        yield from _compare(old.get("items", {}), new.get("items", {}), f"{path}[*]")
    for key in sorted((set(old) | set(new)) - _IGNORED - _HANDLED):
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            detail = f"{key} {_short(old.get(key, _ABSENT))} became {_short(new.get(key, _ABSENT))}"
            yield from _both("keyword_changed", path, detail + " (not comparable: treated as breaking)")


_ABSENT: Any = type("_Absent", (), {"__repr__": lambda self: "absent"})()


def _both(rule: str, path: str, detail: str) -> Iterable[Reason]:
    yield Reason(rule, path, detail, BACKWARD)
    yield Reason(rule, path, detail, FORWARD)


def _type_set(t: Any) -> set[str]:
    if t is None:
        return set(_TYPES)
    names = {t} if isinstance(t, str) else set(t) if isinstance(t, list) else set()
    if "number" in names:
        names.add("integer")  # every integer is a number
    return names


def _types(old: Any, new: Any, path: str) -> Iterable[Reason]:
    a, b = _type_set(old), _type_set(new)
    if a - b:
        yield Reason(
            "type_narrowed", path, f"type {_short(old)} became {_short(new)}: {sorted(a - b)} refused", BACKWARD
        )
    if b - a:
        yield Reason("type_widened", path, f"type {_short(old)} became {_short(new)}: {sorted(b - a)} allowed", FORWARD)


def _enums(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterable[Reason]:
    a, b = old.get("enum"), new.get("enum")
    if a is None and b is None:
        return
    if b is not None and a is None:
        yield Reason("enum_added", path, f"values restricted to {_short(b)}", BACKWARD)
        return
    if a is not None and b is None:
        yield Reason("enum_removed", path, f"values no longer restricted to {_short(a)}", FORWARD)
        return
    assert a is not None and b is not None
    removed = [v for v in a if v not in b]
    added = [v for v in b if v not in a]
    if removed:
        yield Reason("enum_value_removed", path, f"enum value(s) {_short(removed)} removed", BACKWARD)
    if added:
        yield Reason("enum_value_added", path, f"enum value(s) {_short(added)} added", FORWARD)


def _bounds(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterable[Reason]:
    for key in (*_LOWER, *_UPPER):
        a, b = old.get(key), new.get(key)
        if a == b or isinstance(a, bool) or isinstance(b, bool):
            continue
        lower = key in _LOWER
        if a is None:
            tighter = True
        elif b is None:
            tighter = False
        elif not isinstance(a, int | float) or not isinstance(b, int | float):
            yield from _both("keyword_changed", path, f"{key} {_short(a)} became {_short(b)} (not a number)")
            continue
        else:
            tighter = b > a if lower else b < a
        detail = f"{key} {_short(a) if a is not None else 'absent'} became {_short(b) if b is not None else 'absent'}"
        if tighter:
            yield Reason(f"{key}_tightened", path, detail, BACKWARD)
        else:
            yield Reason(f"{key}_loosened", path, detail, FORWARD)


def _closed(schema: dict[str, Any]) -> bool:
    return schema.get("additionalProperties") is False


def _objects(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterable[Reason]:
    op, np_ = old.get("properties") or {}, new.get("properties") or {}
    if not isinstance(op, dict) or not isinstance(np_, dict):
        if op != np_:
            yield from _both("keyword_changed", path, "properties is not an object")
        return
    oreq, nreq = set(old.get("required") or ()), set(new.get("required") or ())
    for name in sorted(nreq - oreq):
        yield Reason("required_added", _at(path, name), f"{name!r} became required", BACKWARD)
    for name in sorted(oreq - nreq):
        yield Reason("required_removed", _at(path, name), f"{name!r} is no longer required", FORWARD)
    oc, nc = _closed(old), _closed(new)
    if nc and not oc:
        yield Reason("additional_properties_closed", path, "additionalProperties became false", BACKWARD)
    if oc and not nc:
        yield Reason("additional_properties_opened", path, "additionalProperties is no longer false", FORWARD)
    elif not oc and not nc:
        a, b = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if a != b:
            yield from _compare(a, b, f"{path}.*")
    for name in sorted(set(op) - set(np_)):
        where = _at(path, name)
        if nc:
            yield Reason(
                "property_removed", where, f"{name!r} removed from a closed object (old data has it)", BACKWARD
            )
        elif op[name] not in ({}, True):
            yield Reason("property_removed", where, f"{name!r} removed: new data may hold any value there", FORWARD)
    for name in sorted(set(np_) - set(op)):
        where = _at(path, name)
        if oc:
            yield Reason("property_added", where, f"{name!r} added to a closed object (old readers refuse it)", FORWARD)
        elif np_[name] not in ({}, True):
            yield Reason("property_added", where, f"{name!r} added: old data may hold any value there", BACKWARD)
    for name in sorted(set(op) & set(np_)):
        yield from _compare(op[name], np_[name], _at(path, name))


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() else f"{path}[{name!r}]"


def _short(value: Any, limit: int = 80) -> str:
    if value is _ABSENT:
        return "absent"
    import orjson

    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
