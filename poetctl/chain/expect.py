"""``correlate --expect``: is there a causation path whose event types match the steps in order?

Computed bottom-up over the forest (children before parents, from the
reversed depth-first order), so a chain of any length is checked without
recursion: a table per node and step, O(nodes x steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from ..errors import UsageError
from ..ids import lazy_pattern
from .forest import Node, walk
from .render import format_hop

_DURATION_RE = lazy_pattern(r"^(\d+(?:\.\d+)?)([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str = "--within") -> float:
    """Seconds of ``30s``, ``15m``, ``2h``, ``3d``, ``1w``; UsageError otherwise."""
    m = _DURATION_RE.match(text.strip())
    if m is None:
        raise UsageError(f"{option} {text!r}: expected a duration like 30s, 15m, 2h, 3d or 1w")
    return float(m[1]) * _UNITS[m[2]]


def parse_steps(text: str) -> list[str]:
    """``'drift.detected>alert.*>feedback.*'`` -> the type globs; UsageError for an empty step."""
    steps = [s.strip() for s in text.split(">")]
    if not steps or any(not s or any(c.isspace() for c in s) for s in steps):
        raise UsageError(
            f"--expect {text!r}: expected type globs separated by '>', e.g. 'drift.detected>alert.*>feedback.*'"
        )
    return steps


class ChainResult:
    """The verdict of :func:`check_chain` (a plain class: ``correlate`` starts without dataclasses)."""

    __slots__ = ("complete", "steps", "matched", "fastest", "within")  # noqa: RUF023 (field order)
    __hash__ = None  # type: ignore[assignment]  # compared by value (as the dataclass was)

    def __init__(
        self,
        complete: bool,
        steps: list[str],
        matched: list[Node],
        fastest: float | None = None,
        within: float | None = None,
    ) -> None:
        self.complete = complete
        self.steps = steps
        # Steps matched by the best path (in order), and its nodes.
        self.matched = matched
        # The fastest complete path's duration (last step's time minus the first's), if any.
        self.fastest = fastest
        self.within = within

    def _values(self) -> tuple[object, ...]:
        return (self.complete, self.steps, self.matched, self.fastest, self.within)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChainResult) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__qualname__}(complete={self.complete!r}, steps={self.steps!r}, "
            f"matched={self.matched!r}, fastest={self.fastest!r}, within={self.within!r})"
        )

    def explain(self) -> str:
        """One line for stderr."""
        chain = " > ".join(self.steps)
        if self.complete:
            took = "" if self.fastest is None else f" in {format_hop(self.fastest)[1:]}"
            return f"chain complete: {chain}{took}"
        if self.fastest is not None and self.within is not None:
            return (
                f"chain incomplete: {chain} took {format_hop(self.fastest)[1:]} at best, "
                f"more than --within {format_hop(self.within)[1:]}"
            )
        k = len(self.matched)
        missing = f"step {k + 1} '{self.steps[k]}' missing"
        if k == 0:
            return f"chain incomplete: {missing}: no event of type {self.steps[0]!r}"
        last = self.matched[-1].event
        return f"chain incomplete: {missing} below {last.type} {last.id} (steps 1-{k} matched)"


def _min(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def check_chain(roots: list[Node], steps: Sequence[str], within: float | None = None) -> ChainResult:
    """Is there a causation path whose events match ``steps`` in order (each below the previous)?

    With ``within``, the last step's time minus the first's must be at most
    ``within`` seconds (the fastest such path counts).
    """
    n = len(steps)
    steps = list(steps)
    order = [node for node, _ in walk(roots)]
    # earliest[id(node)][k]: the earliest time steps k.. can complete in node's subtree (node
    # included), or None. Filled children first: reversed depth-first order has every node after
    # all of its descendants.
    earliest: dict[int, list[float | None]] = {}
    for node in reversed(order):
        kids = [earliest[id(c)] for c in node.children]
        row: list[float | None] = [None] * n
        for k in range(n):
            best: float | None = None
            if fnmatchcase(node.event.type, steps[k]):
                best = node.event.timestamp if k == n - 1 else _min([kid[k + 1] for kid in kids])
            row[k] = _min([best, *(kid[k] for kid in kids)])
        earliest[id(node)] = row

    fastest: float | None = None
    for node in order:
        if fnmatchcase(node.event.type, steps[0]):
            end = node.event.timestamp if n == 1 else _min([earliest[id(c)][1] for c in node.children])
            if end is not None:
                took = end - node.event.timestamp
                fastest = took if fastest is None else min(fastest, took)
    if fastest is not None and (within is None or fastest <= within):
        return ChainResult(True, steps, [], fastest, within)
    return ChainResult(False, steps, _deepest(order, roots, steps), fastest, within)


def _deepest(order: list[Node], roots: list[Node], steps: Sequence[str]) -> list[Node]:
    """The longest prefix of ``steps`` some causation path matches (its nodes).

    ``order`` is the forest in depth-first order. For each node and step k the
    table holds the length of the longest match of steps k.. starting in the
    node's subtree and how to follow it (the node itself then a child's match
    of k+1, or a child's match of k), so the path is rebuilt without copying
    lists at every level.
    """
    n = len(steps)
    # best[(id(node), k)] = (length, node taken or None, child to continue in or None)
    best: dict[tuple[int, int], tuple[int, Node | None, Node | None]] = {}
    for node in reversed(order):
        for k in range(n):
            length, take, via = 0, None, None
            for c in node.children:
                got = best[(id(c), k)][0]
                if got > length:
                    length, take, via = got, None, c
            if fnmatchcase(node.event.type, steps[k]):
                tail, tail_via = 0, None
                if k + 1 < n:
                    for c in node.children:
                        got = best[(id(c), k + 1)][0]
                        if got > tail:
                            tail, tail_via = got, c
                if 1 + tail > length:
                    length, take, via = 1 + tail, node, tail_via
            best[(id(node), k)] = (length, take, via)

    start: Node | None = None
    top = 0
    for r in roots:
        got = best[(id(r), 0)][0]
        if got > top:
            top, start = got, r
    path: list[Node] = []
    at, k = start, 0
    while at is not None and k < n:
        length, take, via = best[(id(at), k)]
        if length == 0:
            break
        if take is not None:
            path.append(take)
            k += 1
        at = via
    return path
