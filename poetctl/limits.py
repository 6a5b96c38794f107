"""Backpressure and throttling: ``[limits]`` and the :class:`Backpressure` error (exit 75).

* ``max_pending`` / ``max_pending_bytes`` (0 = no limit): when the spool holds
  more pending events (or bytes) than that, emitters wait up to their
  ``wait`` (``emit --wait``, default 1 s, the seed's publish timeout) for
  room, then raise :class:`Backpressure`.
* ``[limits.sources]``: per-source rates, ``"external.*" = "100/s"`` (a
  glob on the envelope's ``source``; the first matching pattern counts),
  enforced by a token bucket shared by every process on the spool. An emit
  over its rate raises :class:`Backpressure` at once (``retry_after`` says
  when a token is due); ``poetctl serve`` answers 429 with Retry-After.

Backends keep the figures (the spool: see backends/fs/limits.py).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from .errors import PoetError
from .ids import lazy_pattern

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_WAIT = 1.0  # seconds: the seed's publish timeout
_RATE = lazy_pattern(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*")
_UNIT = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


class Backpressure(PoetError):
    """The spool is full, or the event's source is over its rate: nothing was written; retry later (exit 75).

    ``retry_after`` (seconds) is a hint: when a rate token is due, or the wait
    that was already spent for a full spool.
    """

    exit_code = 75

    def __init__(self, message: str, *, retry_after: float = 1.0, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.retry_after = retry_after


def parse_rate(text: Any) -> float:
    """``"100/s"`` -> events per second; ValueError if not ``N/s``, ``N/m`` or ``N/h`` with N > 0."""
    m = _RATE.fullmatch(text) if isinstance(text, str) else None
    if m is None or float(m[1]) <= 0:
        raise ValueError("a rate like 100/s, 600/m or 1000/h")
    return float(m[1]) / _UNIT[m[2]]


def check_rates(value: Any) -> dict[str, str]:
    """``[limits.sources]`` checked: a table of non-empty source globs to rates."""
    if not isinstance(value, Mapping):
        raise ValueError("a table")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or not k.isprintable():
            raise ValueError("source patterns are non-empty strings")
        parse_rate(v)
        out[k] = v
    return out


class Limits:
    """``[limits]`` of a configuration, parsed; immutable.

    A plain class rather than a frozen dataclass (same constructor, repr,
    equality and hash): ``status`` starts without importing dataclasses.
    """

    __slots__ = ("max_pending", "max_pending_bytes", "rates")

    max_pending: int
    max_pending_bytes: int
    rates: tuple[tuple[str, float], ...]

    def __init__(
        self, max_pending: int = 0, max_pending_bytes: int = 0, rates: tuple[tuple[str, float], ...] = ()
    ) -> None:
        object.__setattr__(self, "max_pending", max_pending)
        object.__setattr__(self, "max_pending_bytes", max_pending_bytes)
        object.__setattr__(self, "rates", rates)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")  # frozen

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return (self.max_pending, self.max_pending_bytes, self.rates)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limits) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[type[Limits], tuple[Any, ...]]:
        return (self.__class__, self._values())  # copy and pickle through the constructor (frozen)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__qualname__}(max_pending={self.max_pending!r}, "
            f"max_pending_bytes={self.max_pending_bytes!r}, rates={self.rates!r})"
        )

    @classmethod
    def of(cls, config: Any) -> Limits:
        t = getattr(config, "limits", None) or {}
        rates = tuple((p, parse_rate(r)) for p, r in (t.get("sources") or {}).items())
        return cls(int(t.get("max_pending", 0)), int(t.get("max_pending_bytes", 0)), rates)

    @property
    def any(self) -> bool:
        return bool(self.max_pending or self.max_pending_bytes or self.rates)

    def rate_of(self, source: str) -> tuple[str, float] | None:
        """The first ``(pattern, rate)`` whose glob matches ``source``, or None."""
        for pattern, rate in self.rates:
            if fnmatch.fnmatchcase(source, pattern):
                return pattern, rate
        return None


def full_message(pending: int, limit: int, what: str = "pending") -> str:
    return f"spool full: {pending} {what} (limit {limit}); retry later"


__all__ = ["DEFAULT_WAIT", "Backpressure", "Limits", "check_rates", "full_message", "parse_rate"]
