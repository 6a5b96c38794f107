"""Compatibility: the spool's read side moved to :mod:`poetctl.backends.fs.query`.

Code outside the filesystem backend reads events through a transport
(:meth:`poetctl.transport.Transport.get` / ``select`` with a
:class:`~poetctl.transport.Query`). This module only keeps ``from poetctl.query
import ...`` working for callers not moved yet (``cli/tail.py``,
``cli/tail_follow.py``); nothing here reads a file.
"""

from __future__ import annotations

from .backends.fs.query import (
    ALL_STATES,
    MAX_READ,
    SMALL_SPOOL,
    VANISHED,
    Found,
    find,
    has_rows,
    index_unusable,
    load,
    load_or_find,
    newest,
    open_index,
    read_found,
    shape_problem,
    state_dirs,
)

__all__ = [
    "ALL_STATES",
    "MAX_READ",
    "SMALL_SPOOL",
    "VANISHED",
    "Found",
    "find",
    "has_rows",
    "index_unusable",
    "load",
    "load_or_find",
    "newest",
    "open_index",
    "read_found",
    "shape_problem",
    "state_dirs",
]
