"""Connected events: the correlation group and causation links of an event.

Used by ``poetctl correlate`` and the demo. "Connected" means: the same
correlation id as any member, or a causation link in either direction,
applied until nothing new joins (a fixpoint).

With the index (``spool/index.py``) only the connected events are read: ids,
correlation groups and causation links come from the index for processed and
dead events, and from the pending and in-flight directories (small while a
daemon keeps up) for the rest. Without an index every event file is read once.

Also here: the renderings of the resulting forest (text tree, nested JSON,
Graphviz dot, Mermaid) and the ``--expect`` chain check.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .errors import UsageError
from .event import Event
from .ids import is_event_id
from .query import SMALL_SPOOL, Found, find, load_or_find, open_index, read_found, state_dirs
from .spool.index import Index
from .spool.layout import SpoolLayout
from .timeparse import iso

STATES = ("pending", "inflight", "processed", "dead")
# Below this many indexed events, connected() reads every file instead of using the index.
SCAN_BELOW = SMALL_SPOOL
OnDamaged = Callable[[Path, str], None]


@dataclass(slots=True)
class Node:
    """One event in the forest; ``missing_cause`` is set when its cause is not in the spool."""

    event: Event
    state: str
    children: list[Node] = field(default_factory=list)
    missing_cause: str | None = None

    @property
    def orphan(self) -> bool:
        return self.missing_cause is not None


# -- reading -----------------------------------------------------------------------------------


def iter_found(
    layout: SpoolLayout, states: Sequence[str] = STATES, on_damaged: OnDamaged | None = None
) -> Iterator[Found]:
    """Every readable, verified event in ``states``; damaged files are reported and skipped."""
    for state in states:
        for d in state_dirs(layout, state):
            try:
                names = [n for n in os.listdir(d) if n.endswith(".json") and not n.startswith(".")]
            except FileNotFoundError:
                continue
            for n in names:
                f = read_found(d / n, state, on_damaged)
                if isinstance(f, Found):
                    yield f


def iter_events(
    layout: SpoolLayout, states: tuple[str, ...] = STATES, on_damaged: OnDamaged | None = None
) -> Iterator[tuple[str, Event]]:
    """Every readable event with its state; damaged files are skipped (reported via ``on_damaged``)."""
    for f in iter_found(layout, states, on_damaged):
        yield f.state, f.event


def connected(
    layout: SpoolLayout, ident: str, *, index: Index | bool | None = True, on_damaged: OnDamaged | None = None
) -> list[Node]:
    """Roots of the trees connected to ``ident`` (an event id or a correlation id); [] if unknown.

    ``index``: an open :class:`Index`, True to use the spool's index if it
    exists and is not tiny (:data:`SCAN_BELOW`), or False/None to read every
    event file.
    """
    return build_forest(collect(layout, ident, index=index, on_damaged=on_damaged))


def collect(
    layout: SpoolLayout, ident: str, *, index: Index | bool | None = True, on_damaged: OnDamaged | None = None
) -> dict[str, Found]:
    """The connected events of ``ident`` by id (see :func:`connected`)."""
    idx: Index | None
    own = False
    if isinstance(index, Index):
        idx = index
    elif index:
        # Small spools are read whole: exact even while the daemon's index writes lag behind.
        idx = open_index(layout, SCAN_BELOW)
        own = idx is not None
    else:
        idx = None
    try:
        if idx is None:
            return _collect_scan(layout, ident, on_damaged)
        return _collect_indexed(layout, ident, idx, on_damaged)
    finally:
        if own and idx is not None:
            idx.close()


def _collect_scan(layout: SpoolLayout, ident: str, on_damaged: OnDamaged | None) -> dict[str, Found]:
    events: dict[str, Found] = {}
    for f in iter_found(layout, STATES, on_damaged):
        events.setdefault(f.id, f)  # moved during the scan: keep the first sighting
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


def _collect_indexed(layout: SpoolLayout, ident: str, idx: Index, on_damaged: OnDamaged | None) -> dict[str, Found]:
    # Pending and in-flight events are not indexed; those directories are small, read them whole.
    live: dict[str, Found] = {}
    for f in iter_found(layout, ("pending", "inflight"), on_damaged):
        live.setdefault(f.id, f)
    live_corr: dict[str, list[str]] = {}
    live_children: dict[str, list[str]] = {}
    for eid, f in live.items():
        if f.event.correlation_id:
            live_corr.setdefault(f.event.correlation_id, []).append(eid)
        if f.event.causation_id:
            live_children.setdefault(f.event.causation_id, []).append(eid)

    members: dict[str, Found] = {}
    absent: set[str] = set()
    corr_done: set[str] = set()
    # Queue entries: (id, state the index gives or None).
    queue: deque[tuple[str, str | None]] = deque()

    def locate(eid: str, state: str | None) -> Found | None:
        if eid in live:
            return live[eid]
        if not is_event_id(eid):
            return None
        if state is None:
            row = idx.get(eid)
            state = None if row is None else str(row[7])
        if state in ("processed", "dead"):
            # The index can lag or be stale (replayed, retried): fall back to a lookup by id.
            return load_or_find(layout, getattr(layout, state) / f"{eid}.json", state, eid, on_damaged)
        # Not indexed (yet): look in every state, a handful of stat calls.
        return find(layout, eid, on_damaged)

    def group(cid: str) -> None:
        if cid in corr_done:
            return
        corr_done.add(cid)
        queue.extend((str(r[0]), str(r[7])) for r in idx.by_correlation(cid))
        queue.extend((i, None) for i in live_corr.get(cid, []))

    def join(f: Found) -> None:
        members[f.id] = f
        e = f.event
        if e.correlation_id:
            group(e.correlation_id)
        if e.causation_id and e.causation_id not in members:
            queue.append((e.causation_id, None))
        queue.extend((str(r[0]), str(r[7])) for r in idx.by_causation(f.id))
        queue.extend((i, None) for i in live_children.get(f.id, []))

    first = locate(ident, None)
    if first is not None and first.id == ident:
        join(first)
    group(ident)  # an id may also be used as a correlation id
    while queue:
        eid, state = queue.popleft()
        if eid in members or eid in absent:
            continue
        got = locate(eid, state)
        if got is None:
            absent.add(eid)
        else:
            join(got)
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


# -- rendering ---------------------------------------------------------------------------------


def format_hop(seconds: float) -> str:
    """A short signed duration: +17ms, +2.350s, +3m05s, +2h03m, +1d04h."""
    sign = "-" if seconds < 0 else "+"
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.3f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def render_tree(roots: list[Node]) -> str:
    """A plain-text tree: type, id, state, time and the hop from the parent; missing causes flagged."""
    lines: list[str] = []

    def visit(node: Node, prefix: str, last: bool, parent_ts: float | None, top: bool, depth: int) -> None:
        e = node.event
        hop = "" if parent_ts is None else f"  {format_hop(e.timestamp - parent_ts)}"
        branch = "" if top else ("└─ " if last else "├─ ")
        orphan = f"  (cause {node.missing_cause} not found)" if node.missing_cause else ""
        lines.append(f"{prefix}{branch}{e.type}  {e.id}  [{node.state}]  {iso(e.timestamp)}{hop}{orphan}")
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        for i, c in enumerate(node.children):
            visit(c, child_prefix, i == len(node.children) - 1, e.timestamp, False, depth + 1)

    for r in roots:
        visit(r, "", True, None, True, 0)
    return "\n".join(lines)


def to_json(roots: list[Node]) -> list[dict[str, Any]]:
    """Nested nodes: id, type, topic, state, timestamp, time, source, causation_id,
    correlation_id, hop_seconds (None for roots), orphan, children."""

    def node_json(node: Node, parent_ts: float | None) -> dict[str, Any]:
        e = node.event
        d: dict[str, Any] = {
            "id": e.id,
            "type": e.type,
            "topic": e.topic,
            "state": node.state,
            "timestamp": e.timestamp,
            "time": iso(e.timestamp),
            "source": e.source,
            "causation_id": e.causation_id,
            "correlation_id": e.correlation_id,
            "hop_seconds": None if parent_ts is None else round(e.timestamp - parent_ts, 6),
            "orphan": node.orphan,
        }
        d["children"] = [node_json(c, e.timestamp) for c in node.children]
        return d

    return [node_json(r, None) for r in roots]


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(roots: list[Node], title: str = "poet") -> str:
    """A Graphviz digraph: one box per event (type, id, state), edges labelled with the hop."""
    lines = [
        f"digraph {_dot_str(title)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for node, parent in walk(roots):
        e = node.event
        label = f"{e.type}\n{e.id}\n[{node.state}] {iso(e.timestamp)}"
        lines.append(f"  {_dot_str(e.id)} [label={_dot_str(label)}];")
        if parent is not None:
            hop = format_hop(e.timestamp - parent.event.timestamp)
            lines.append(f"  {_dot_str(parent.event.id)} -> {_dot_str(e.id)} [label={_dot_str(hop)}];")
        if node.missing_cause:
            ghost = "missing:" + node.missing_cause
            lines.append(
                f"  {_dot_str(ghost)} [label={_dot_str('cause ' + node.missing_cause + ' not found')}, "
                "style=dashed, color=red, fontcolor=red];"
            )
            lines.append(f"  {_dot_str(ghost)} -> {_dot_str(e.id)} [style=dashed, color=red];")
    lines.append("}")
    return "\n".join(lines)


_MERMAID_UNSAFE = re.compile(r'["<>#&\[\]{}()|`]')


def _mermaid_text(text: str) -> str:
    # Entity codes keep labels inside the quotes valid whatever the id or type contains.
    return _MERMAID_UNSAFE.sub(lambda m: f"#{ord(m.group())};", text)


def unique_prefix(ids: Sequence[str], shortest: int = 8) -> int:
    """The shortest prefix length (at least ``shortest``) that tells all ``ids`` apart, like git does."""
    distinct = set(ids)
    n = shortest
    while n < max((len(i) for i in distinct), default=0) and len({i[:n] for i in distinct}) < len(distinct):
        n += 1
    return n


def to_mermaid(roots: list[Node], prefix: int | None = None) -> str:
    """A Mermaid flowchart (``graph TD``); node labels are "type<br/>id-prefix".

    The prefix is as short as possible (8 characters or more) while telling
    the events apart: UUIDv7 ids of one moment share their leading digits.
    """
    if prefix is None:
        prefix = unique_prefix([n.event.id for n, _ in walk(roots)])
    names: dict[int, str] = {}
    lines = ["graph TD"]
    edges: list[str] = []
    ghosts = 0
    for node, parent in walk(roots):
        e = node.event
        name = names[id(node)] = f"n{len(names)}"
        lines.append(f'  {name}["{_mermaid_text(e.type)}<br/>{_mermaid_text(e.id[:prefix])}"]')
        if parent is not None:
            hop = format_hop(e.timestamp - parent.event.timestamp)
            edges.append(f'  {names[id(parent)]} -->|"{_mermaid_text(hop)}"| {name}')
        if node.missing_cause:
            g = f"m{ghosts}"
            ghosts += 1
            lines.append(f'  {g}["cause {_mermaid_text(node.missing_cause[:prefix])} not found"]:::missing')
            edges.append(f"  {g} -.-> {name}")
    lines.extend(edges)
    if ghosts:
        lines.append("  classDef missing stroke-dasharray: 5 5,stroke:#c00,color:#c00;")
    return "\n".join(lines)


# -- expectations ------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])\Z")
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


@dataclass(slots=True)
class ChainResult:
    """The verdict of :func:`check_chain`."""

    complete: bool
    steps: list[str]
    # Steps matched by the best path (in order), and its nodes.
    matched: list[Node]
    # The fastest complete path's duration (last step's time minus the first's), if any.
    fastest: float | None = None
    within: float | None = None

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


def check_chain(roots: list[Node], steps: Sequence[str], within: float | None = None) -> ChainResult:
    """Is there a causation path whose events match ``steps`` in order (each below the previous)?

    With ``within``, the last step's time minus the first's must be at most
    ``within`` seconds (the fastest such path counts).
    """
    n = len(steps)
    steps = list(steps)
    fin: dict[tuple[int, int], float | None] = {}

    def earliest(node: Node, k: int) -> float | None:
        """Earliest time steps k.. can complete in node's subtree (node included), or None."""
        key = (id(node), k)
        if key in fin:
            return fin[key]
        fin[key] = None  # cycle guard
        best: float | None = None
        if fnmatchcase(node.event.type, steps[k]):
            best = node.event.timestamp if k == n - 1 else _min(earliest(c, k + 1) for c in node.children)
        best = _min([best, *(earliest(c, k) for c in node.children)])
        fin[key] = best
        return best

    fastest: float | None = None
    for node, _ in walk(roots):
        if fnmatchcase(node.event.type, steps[0]):
            end = node.event.timestamp if n == 1 else _min(earliest(c, 1) for c in node.children)
            if end is not None:
                took = end - node.event.timestamp
                fastest = took if fastest is None else min(fastest, took)
    if fastest is not None and (within is None or fastest <= within):
        return ChainResult(True, steps, [], fastest, within)
    return ChainResult(False, steps, _deepest(roots, steps), fastest, within)


def _min(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _deepest(roots: list[Node], steps: Sequence[str]) -> list[Node]:
    """The longest prefix of ``steps`` some causation path matches (its nodes)."""
    best: list[Node] = []
    memo: dict[tuple[int, int], list[Node]] = {}

    def longest(node: Node, k: int) -> list[Node]:
        key = (id(node), k)
        if key in memo:
            return memo[key]
        memo[key] = []
        out: list[Node] = []
        for c in node.children:
            got = longest(c, k)
            if len(got) > len(out):
                out = got
        if k < len(steps) and fnmatchcase(node.event.type, steps[k]):
            tail: list[Node] = []
            if k + 1 < len(steps):
                for c in node.children:
                    got = longest(c, k + 1)
                    if len(got) > len(tail):
                        tail = got
            if 1 + len(tail) > len(out):
                out = [node, *tail]
        memo[key] = out
        return out

    for r in roots:
        got = longest(r, 0)
        if len(got) > len(best):
            best = got
    return best
