"""Cheap byte scans of canonical JSON for the emit's fast seal (:func:`poetctl.envelope.plain_json`).

Moved out of :mod:`poetctl.envelope`, which imports them: does serialised JSON hold a ``null``, and how many
containers does it open (at least: beyond :data:`~poetctl.jsoninput.MAX_DEPTH` the walk decides).
"""

from __future__ import annotations

import re

SCAN_ALL = 2048  # payload bytes up to which scanning the whole canonical envelope beats serialising its head

# re's literal search beats ``b"null" in data`` 1.5-2x here: bytes' search skips on a bloom filter in
# which "n", "u" and "l" share bits with ".", "5" and ",", so it crawls through number-heavy JSON.
NULL = re.compile(b"null")
_FEW = 8  # openers of one kind found one by one (memchr) before counting the rest


def has_null(data: bytes) -> bool:
    """``b"null" in data``, faster: a large document is searched for its first few ``n`` bytes by memchr."""
    if len(data) <= SCAN_ALL:
        return NULL.search(data) is not None
    i = data.find(b"n")
    for _ in range(_FEW):
        if i < 0:
            return False
        if data.startswith(b"null", i):
            return True
        i = data.find(b"n", i + 1)
    return i >= 0 and NULL.search(data, i) is not None


def openers(data: bytes) -> int:
    """How many ``{`` and ``[`` bytes ``data`` holds, or at least more than MAX_DEPTH.

    A large payload mostly holds a few containers: finding each (``find`` is a
    memchr) is far cheaper than counting every byte (``count`` compares each),
    which serves small documents and what has many containers.
    """
    if len(data) <= SCAN_ALL:
        return data.count(b"{") + data.count(b"[")
    n = 0
    for opener in (b"{", b"["):
        i = data.find(opener)
        found = 0
        while i >= 0:
            found += 1
            if found == _FEW:
                n += data.count(opener, i + 1)
                break
            i = data.find(opener, i + 1)
        n += found
    return n


__all__ = ["NULL", "SCAN_ALL", "has_null", "openers"]
