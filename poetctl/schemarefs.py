"""What a schema may refer to: references only inside its own file, drafts poetctl knows; jsonschema-rs as configured.

Moved out of :mod:`.schemas` (which re-exports these names): the checks a schema file passes before any
validator is built from it.
"""

from __future__ import annotations

from .errors import InvalidData

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the one-event emit path (tests/test_emit_lean.py)
    from pathlib import Path
    from typing import Any

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


def _defrag(url: str) -> str:
    """``urllib.parse.urldefrag(url).url``; urllib.parse is imported only for a URL with a ``#`` (start-up).

    ``urldefrag`` returns a URL without ``#`` unchanged, which is what the
    ``$id`` and ``$schema`` of the built-in schemas are.
    """
    if "#" not in url:
        return url
    from urllib.parse import urldefrag

    return urldefrag(url).url


def _join(base: str, url: str) -> str:
    from urllib.parse import urljoin

    return urljoin(base, url)


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
    base = _defrag(root_id) if isinstance(root_id, str) else ""
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
            base = _defrag(_join(base, nid))
            local.add(base)
        for k, v in node.items():
            where = f"{pointer}/{k}"
            if isinstance(v, str) and k in _REF_KEYWORDS:
                refs.append((v, base, where))
            elif isinstance(v, str) and k == "$schema" and _defrag(v) not in KNOWN_DRAFTS:
                raise InvalidData(
                    f"$schema {v!r} at #{where} is not a draft poetctl knows; expected one of "
                    f"{', '.join(sorted(KNOWN_DRAFTS))} (poetctl never fetches meta-schemas)",
                    where=str(path),
                )
            elif isinstance(v, dict | list):
                stack.append((v, base, where))
    for ref, ref_base, where in refs:
        if _defrag(_join(ref_base, ref)) not in local:
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
