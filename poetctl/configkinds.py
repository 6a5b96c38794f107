"""The kinds of configuration values and how each is checked (:class:`Setting`).

Split from :mod:`poetctl.configspec`, which holds the tables of keys; this
module holds what a key's value may be.
"""

from __future__ import annotations

import math
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DELIVERY_MODES = ("local_only", "nats", "hybrid")
# Envelope fields a partition key may name (attributes of Event); else ``payload.<dotted path>``.
PARTITION_FIELDS = ("id", "type", "source", "topic", "correlation_id", "causation_id")
_PAYLOAD_PATH = r"payload(\.[A-Za-z0-9_-]+)+"  # compiled on first use (re caches it), not at import
# Mirrors schemas/envelope.json metadata.version (a test checks they agree).
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
FREE_FORM = ("nats", "external_integrations")
MAX_SHOWN = 60  # characters of a bad value quoted in an error
# A secret in poet.toml is named, never written: env:NAME or file:PATH (several for rotation).
_SECRET_REF = r"env:[A-Za-z_][A-Za-z0-9_]*|file:[^\0]+"


class Setting:
    """One key: ``kind`` is int, float, bool, str, choice, duration, strlist, path, pathlist, partition_key,
    secret, secretlist (a non-empty list), secrets (one reference or a list) or url.

    ``lo``/``hi`` bound a number (inclusive) or a string's length. A plain
    class, not a dataclass: building ~50 dataclass instances' class at
    import would cost start-up time on every command.
    """

    __slots__ = ("choices", "default", "env", "hi", "kind", "lo", "pattern")

    def __init__(
        self,
        kind: str,
        default: Any,
        lo: float | None = None,
        hi: float | None = None,
        *,
        choices: tuple[str, ...] = (),
        pattern: str | None = None,
        env: str | None = None,
    ) -> None:
        self.kind = kind
        self.default = default
        self.lo = lo
        self.hi = hi
        self.choices = choices
        self.pattern = pattern
        self.env = env

    def expected(self) -> str:
        """What is allowed, in words (used in every error about this key)."""
        k = self.kind
        if k in ("int", "float"):
            what = "an integer" if k == "int" else "a number"
            if self.lo is not None and self.hi is not None:
                return f"{what} from {_num(self.lo)} to {_num(self.hi)}"
            if self.lo is not None:
                return f"{what} >= {_num(self.lo)}"
            return what
        if k == "bool":
            return "true or false"
        if k == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if k == "str":
            if self.pattern is not None:
                return f"a string matching {self.pattern}"
            return f"a string of {_num(self.lo or 0)} to {_num(self.hi or 0)} characters"
        if k == "duration":
            return "a duration like 30s, 5m, 2h, 1d or a number of seconds"
        if k == "strlist":
            return "a list of strings"
        if k == "path":
            return "a path string"
        if k == "pathlist":
            return "a list of path strings"
        if k == "secret":
            return "a secret: env:NAME or file:/path (a literal works but is discouraged)"
        if k == "secretlist":
            return "a non-empty list of secrets, each env:NAME or file:/path"
        if k == "url":
            return "an http:// or https:// URL, or env:NAME"
        if k == "shares":
            return "a table like {high = 70, normal = 25, low = 5} (integers from 1 to 1000)"
        if k == "rates":
            return 'a table of source patterns to rates, like {"external.*" = "100/s"} (per s, m or h)'
        if k == "secrets":
            return 'a secret reference or a list of them: "env:NAME" or "file:/path" (never the secret itself)'
        return "a field name or list of them: " + ", ".join(PARTITION_FIELDS) + " or payload.<key>[.<key>...]"

    def check(self, value: Any) -> Any:
        """The value normalised (ints for floats become floats, a partition key a list); ValueError if not allowed."""
        k = self.kind
        if k == "bool":
            if isinstance(value, bool):
                return value
        elif k == "int":
            if isinstance(value, int) and not isinstance(value, bool) and self._in_range(value):
                return value
        elif k == "float":
            if isinstance(value, int | float) and not isinstance(value, bool):
                f = float(value)
                if math.isfinite(f) and self._in_range(f):
                    return f
        elif k == "choice":
            if value in self.choices:
                return value
        elif k == "str":
            if isinstance(value, str) and self._str_ok(value):
                return value
        elif k == "duration":
            return self._duration(value)
        elif k in ("strlist", "pathlist"):
            if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
                return list(value)
        elif k == "path":
            if isinstance(value, str) and value and "\0" not in value:
                return value
        elif k == "secret":
            if _secret_ok(value):
                return value
        elif k == "secretlist":
            if isinstance(value, list) and value and all(_secret_ok(v) for v in value):
                return list(value)
        elif k == "url":
            if isinstance(value, str) and (
                re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value) is not None or re.fullmatch(_ENV_REF, value)
            ):
                return value
        elif k == "secrets":
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list) and all(isinstance(v, str) and re.fullmatch(_SECRET_REF, v) for v in items):
                return list(items)
        elif k == "shares":
            from .priority import check_shares

            return check_shares(value)
        elif k == "rates":
            from .limits import check_rates

            return check_rates(value)
        elif k == "partition_key":
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list) and items and all(_partition_ok(v) for v in items):
                return list(items)
        raise ValueError(self.expected())

    def parse_env(self, text: str) -> Any:
        """The value of an environment variable for this key (text), checked like a file value."""
        k = self.kind
        value: Any = text
        if k == "bool":
            t = text.strip().lower()
            value = True if t in ("1", "true", "yes", "on") else False if t in ("0", "false", "no", "off") else text
        elif k == "int":
            try:
                value = int(text.strip())
            except ValueError:
                pass
        elif k == "strlist":
            value = [h.strip() for h in text.split(",") if h.strip()]
        elif k == "pathlist":
            import os

            value = [p for p in text.split(os.pathsep) if p]
        return self.check(value)

    def _in_range(self, v: float) -> bool:
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)

    def _str_ok(self, v: str) -> bool:
        if self.pattern is not None:
            return re.fullmatch(self.pattern, v) is not None
        return self._in_range(len(v)) and v.isprintable()

    def _duration(self, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and value >= 0:
                return value
        elif isinstance(value, str):
            # parse_duration is what `status` applies; imported only when a file sets a duration.
            from .errors import UsageError
            from .ops.status import parse_duration

            try:
                parse_duration(value, "")
                return value
            except UsageError:
                pass
        raise ValueError(self.expected())


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


_ENV_REF = r"env:[A-Za-z_][A-Za-z0-9_]{0,127}"


def _secret_ok(v: Any) -> bool:
    if not isinstance(v, str) or not v or "\0" in v:
        return False
    if v.startswith("env:"):
        return re.fullmatch(_ENV_REF, v) is not None
    if v.startswith("file:"):
        return len(v) > 5
    return v.isprintable()


def _partition_ok(v: Any) -> bool:
    return isinstance(v, str) and (v in PARTITION_FIELDS or re.fullmatch(_PAYLOAD_PATH, v) is not None)


_DAY = 86400.0
_BIG = 10_000_000
