"""Which names in ``events/corrupt/`` are quarantined files: the one rule ``corrupt list`` and ``status`` share.

A quarantined ``X`` comes with its reason record ``X.reason``
(:func:`poetctl.backends.fs.journal.quarantine` writes both). ``X.reason`` is the
reason record of ``X`` whenever ``X`` is present, and an entry of its own
otherwise (a quarantined file that happens to end in ``.reason``, or a
reason record whose file is gone); dot names are writers' tmp files and
``.gitkeep``. Kept apart from :mod:`poetctl.backends.fs.corrupt` so that ``status``
counts without importing what requeueing needs.
"""

from __future__ import annotations

from collections.abc import Iterable

REASON_SUFFIX = ".reason"


def is_reason_of_present_file(name: str, names: set[str]) -> bool:
    """``X.reason`` beside ``X``: the reason record, not a quarantined file of its own."""
    return name.endswith(REASON_SUFFIX) and name[: -len(REASON_SUFFIX)] in names


def visible(names: Iterable[str]) -> set[str]:
    """The names of a listing that are not writers' tmp files (dot names)."""
    return {n for n in names if not n.startswith(".")}


def quarantined(names: set[str]) -> list[str]:
    """The entries ``corrupt list`` shows, sorted: every visible name but the reason records of present files."""
    return sorted(n for n in names if not n.startswith(".") and not is_reason_of_present_file(n, names))
