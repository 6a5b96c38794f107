"""Where a type's schema versions live: ``<dir>/<type>/<n>.json``, one file per version.

A directory per type, one file per version (rather than a ``version`` key inside
each file) so that every published version is an immutable, ordinary JSON Schema
file: it can be diffed, compared with ``poetctl schemas check-compat OLD.json
NEW.json``, opened by any editor or validator, and found by a path lookup without
parsing its siblings. A flat ``<dir>/<type>.json`` (the layout before versions,
still accepted in user directories) is version 1 of that type.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidData
from .ids import TYPE_RE, lazy_pattern

# A version is a positive integer without leading zeros: it becomes a file name.
VERSION_NAME_RE = lazy_pattern(r"[1-9][0-9]{0,8}\.json")


def is_version_name(name: str) -> bool:
    """``VERSION_NAME_RE.fullmatch(name)``, without compiling it (start-up of a one-event emit)."""
    n = name[:-5]
    return name.endswith(".json") and 1 <= len(n) <= 9 and n[0] != "0" and not n.strip("0123456789")


MAX_SCHEMA_VERSION = 999_999_999  # envelope.json's maximum for metadata.schema_version


def defines(d: Path, event_type: str) -> bool:
    """True if directory ``d`` holds schemas of ``event_type`` (either layout)."""
    return (d / event_type).is_dir() or (d / f"{event_type}.json").is_file()


def versions_in(d: Path, event_type: str) -> dict[int, Path]:
    """Version -> schema file of ``event_type`` in ``d``, ascending; {} if ``d`` does not define it.

    Raises :class:`InvalidData` for a type defined in both layouts (which one is
    meant?) and for a ``.json`` file in the type's directory whose name is not a
    version number: silently skipping ``v2.json`` would validate against v1.
    """
    flat = d / f"{event_type}.json"
    folder = d / event_type
    if not folder.is_dir():
        return {1: flat} if flat.is_file() else {}
    if flat.is_file():
        raise InvalidData(
            f"{event_type} is defined twice: by {flat} and by the directory {folder}; keep one "
            f"(the directory form, {folder}/1.json, ...)",
            where=str(flat),
        )
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        if not p.name.endswith(".json"):
            continue
        if not is_version_name(p.name):
            raise InvalidData(
                f"schema file name {p.name!r} is not a version; expected <n>.json with n a positive integer "
                "(1.json, 2.json, ...)",
                where=str(p),
            )
        if p.is_file():
            found[int(p.name[:-5])] = p
    return dict(sorted(found.items()))


def types_in(d: Path) -> list[str]:
    """The type names ``d`` defines (either layout), sorted; envelope.json is not a type."""
    if not d.is_dir():
        return []
    names: set[str] = set()
    for p in d.iterdir():
        if p.is_dir() and TYPE_RE.match(p.name) and any(is_version_name(c.name) for c in p.iterdir()):
            names.add(p.name)
        elif p.name.endswith(".json") and p.name != "envelope.json" and TYPE_RE.match(p.name[:-5]) and p.is_file():
            names.add(p.name[:-5])
    return sorted(names)


def check_version(value: object, where: str | None = None, what: str = "schema version") -> int:
    """``value`` as a schema version (an integer from 1), or :class:`InvalidData`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SCHEMA_VERSION:
        raise InvalidData(f"bad {what} {value!r}; expected an integer from 1 to {MAX_SCHEMA_VERSION}", where=where)
    return value
