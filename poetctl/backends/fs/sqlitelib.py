"""The SQLite module the index's readers use: the C module ``_sqlite3``, without ``sqlite3``'s wrapper.

``import sqlite3`` is ``_sqlite3`` plus ``sqlite3.dbapi2``, which imports
``datetime`` and registers the default date/datetime adapters and converters
(deprecated since Python 3.12): ~7M instructions at start-up, a sixth of
``python -c pass``, for ``status``, ``tail`` and ``correlate``. The index
binds and reads only text, numbers and NULL and never asks for type
detection, so those adapters never apply; every name used here (``connect``,
``Connection``, ``Error`` and its subclasses) is the very same object in both
modules, so ``except sqlite3.Error`` catches the same errors either way.
"""

from __future__ import annotations

__all__ = ["sqlite3"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3 as sqlite3
else:
    try:
        import _sqlite3 as sqlite3
    except ImportError:  # an interpreter without the C module's usual name
        import sqlite3
