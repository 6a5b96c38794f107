"""Text that is safe to show on a terminal: control characters become visible escapes.

Event fields, error texts and file names come from the spool, i.e. from
anyone who can write an event or a handler. A control character in them must
not reach a terminal as one (``ESC ] 0 ;`` sets the window title, ``ESC [ 2 J``
clears the screen, a bidi override reorders what is shown, a lone surrogate
cannot even be encoded): it is printed as ``\\x1b`` or ``\\u202e`` instead.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# C0 controls, DEL, C1 controls, lone surrogates (undecodable bytes of a file name), the Unicode
# line/paragraph separators and the bidirectional formatting characters (marks, embeddings,
# overrides, isolates).
_UNSAFE = "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
# The same but keeping newlines, for multi-line text (trees, diagnostics listing several problems).
_UNSAFE_BUT_NL = "[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
# Compiled on first use: these wide classes take over a millisecond to compile, and a reader
# printing JSON lines (tail -n 10 in a pipe) never needs them.
_compiled: dict[str, re.Pattern[str]] = {}


def _pattern(source: str) -> re.Pattern[str]:
    p = _compiled.get(source)
    if p is None:
        p = _compiled[source] = re.compile(source)
    return p


def _escape(m: re.Match[str]) -> str:
    o = ord(m.group())
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def clean(value: Any) -> str:
    """``value`` as one line of terminal-safe text (newlines and tabs escaped too)."""
    text = value if isinstance(value, str) else str(value)
    return _pattern(_UNSAFE).sub(_escape, text)


def clean_lines(text: str) -> str:
    """Like :func:`clean` but keeps newlines."""
    return _pattern(_UNSAFE_BUT_NL).sub(_escape, text)
