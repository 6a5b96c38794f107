"""Connected events as a forest: causation links make trees, roots by time; iterative walks.

Collecting what is connected to an id (the correlation group and causation
links both ways, via the index when there is one) reads the spool, so it is
the filesystem backend's (:mod:`poetctl.backends.fs.connected`); this module
builds and walks the forest of what was collected.

Everything here is iterative (explicit stacks): a causal chain may be
thousands of hops long, far deeper than Python's recursion limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ..event import Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..backends.fs.query import Found

STATES = ("pending", "inflight", "processed", "dead")
OnDamaged = Callable[[Path, str], None]


class Node:
    """One event in the forest; ``missing_cause`` is set when its cause is not in the spool.

    Written out rather than a dataclass (same constructor, repr and equality):
    ``correlate`` starts without importing dataclasses.
    """

    __slots__ = ("event", "state", "children", "missing_cause")  # noqa: RUF023 (field order: repr, equality)
    __hash__ = None  # type: ignore[assignment]  # compared by value, mutable (as the dataclass was)

    def __init__(
        self, event: Event, state: str, children: list[Node] | None = None, missing_cause: str | None = None
    ) -> None:
        self.event = event
        self.state = state
        self.children: list[Node] = [] if children is None else children
        self.missing_cause = missing_cause

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node) or other.__class__ is not self.__class__:
            return NotImplemented
        return (self.event, self.state, self.children, self.missing_cause) == (
            other.event,
            other.state,
            other.children,
            other.missing_cause,
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__qualname__}(event={self.event!r}, state={self.state!r}, "
            f"children={self.children!r}, missing_cause={self.missing_cause!r})"
        )

    @property
    def orphan(self) -> bool:
        return self.missing_cause is not None


def members_of(events: dict[str, Found], ident: str) -> dict[str, Found]:
    """The members of ``events`` connected to ``ident`` (any backend: NATS reads its stream into ``events``)."""
    by_corr: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for eid, f in events.items():
        e = f.event
        if e.correlation_id:
            by_corr.setdefault(e.correlation_id, []).append(eid)
        if e.causation_id:
            children.setdefault(e.causation_id, []).append(eid)
    seeds = [ident] if ident in events else []
    seeds += by_corr.get(ident, [])
    members: dict[str, Found] = {}
    stack = list(seeds)
    while stack:
        eid = stack.pop()
        if eid in members or eid not in events:
            continue
        f = members[eid] = events[eid]
        stack.extend(children.get(eid, []))
        if f.event.causation_id:
            stack.append(f.event.causation_id)
        if f.event.correlation_id:
            stack.extend(by_corr.get(f.event.correlation_id, []))
    return members


def build_forest(members: dict[str, Found]) -> list[Node]:
    """Link members into trees by causation; roots sorted by time. Missing causes are flagged."""
    nodes = {eid: Node(f.event, f.state) for eid, f in members.items()}
    roots: list[Node] = []
    for node in nodes.values():
        parent = node.event.causation_id
        if parent is not None and parent in nodes and parent != node.event.id:
            nodes[parent].children.append(node)
        else:
            if parent is not None and parent not in nodes:
                node.missing_cause = parent
            roots.append(node)
    key: Callable[[Node], tuple[float, str]] = lambda n: (n.event.timestamp, n.event.id)  # noqa: E731
    for node in nodes.values():
        node.children.sort(key=key)
    roots.sort(key=key)
    reached = {id(n) for n, _ in walk(roots)}
    if len(reached) < len(nodes):
        # A causation cycle (only possible with hand-made ids) has no root: show each from its
        # oldest member and drop the edge that closes it, so every rendering terminates.
        for node in sorted(nodes.values(), key=key):
            if id(node) in reached:
                continue
            roots.append(node)
            reached.add(id(node))
            stack = [node]
            while stack:
                x = stack.pop()
                keep = []
                for c in x.children:
                    if id(c) not in reached:
                        reached.add(id(c))
                        keep.append(c)
                        stack.append(c)
                x.children = keep
        roots.sort(key=key)
    return roots


def walk(roots: list[Node]) -> Iterator[tuple[Node, Node | None]]:
    """(node, parent) for every node, depth first, each node once."""
    seen: set[int] = set()
    stack: list[tuple[Node, Node | None]] = [(r, None) for r in reversed(roots)]
    while stack:
        node, parent = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node, parent
        stack.extend((c, node) for c in reversed(node.children))


def walk_depth(roots: list[Node]) -> Iterator[tuple[Node, Node | None, int, bool]]:
    """(node, parent, depth, last) depth first: depth 0 for roots, ``last`` if the node is its parent's last child."""
    seen: set[int] = set()
    stack: list[tuple[Node, Node | None, int, bool]] = [(r, None, 0, i == 0) for i, r in enumerate(reversed(roots))]
    while stack:
        node, parent, depth, last = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node, parent, depth, last
        kids = node.children
        stack.extend((c, node, depth + 1, i == 0) for i, c in enumerate(reversed(kids)))
