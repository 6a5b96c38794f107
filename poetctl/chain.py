"""Connected events: the correlation group and causation links of an event.

Used by the demo now and by ``poetctl correlate``. Reads every event file
once; the operations work adds an index so this stays fast at scale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .event import Event
from .spool.layout import SpoolLayout

STATES = ("pending", "inflight", "processed", "dead")


@dataclass(slots=True)
class Node:
    event: Event
    state: str
    children: list[Node] = field(default_factory=list)


def iter_events(layout: SpoolLayout, states: tuple[str, ...] = STATES) -> Iterator[tuple[str, Event]]:
    """Every readable event with its state; damaged files are skipped (fsck reports them)."""
    dirs: list[tuple[str, Path]] = []
    for s in states:
        if s == "inflight":
            dirs += [("inflight", d) for d in layout.inflight_dirs()]
        else:
            dirs.append((s, getattr(layout, s)))
    for state, d in dirs:
        try:
            names = [n for n in os.listdir(d) if n.endswith(".json") and not n.startswith(".")]
        except FileNotFoundError:
            continue
        for n in names:
            try:
                with open(d / n, "rb") as fh:
                    yield state, Event.from_dict(orjson.loads(fh.read()))
            except (OSError, ValueError, KeyError, TypeError):
                continue


def connected(layout: SpoolLayout, ident: str) -> list[Node]:
    """Roots of the trees connected to ``ident`` (an event id or a correlation id).

    Connected means: same correlation id as any member, or a causation link in
    either direction, applied until nothing new joins.
    """
    events: dict[str, tuple[str, Event]] = {e.id: (s, e) for s, e in iter_events(layout)}
    by_corr: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for eid, (_, e) in events.items():
        if e.correlation_id:
            by_corr.setdefault(e.correlation_id, []).append(eid)
        if e.causation_id:
            children.setdefault(e.causation_id, []).append(eid)
    seeds = [ident] if ident in events else by_corr.get(ident, [])
    members: set[str] = set()
    stack = list(seeds)
    while stack:
        eid = stack.pop()
        if eid in members or eid not in events:
            continue
        members.add(eid)
        e = events[eid][1]
        stack.extend(children.get(eid, []))
        if e.causation_id:
            stack.append(e.causation_id)
        if e.correlation_id:
            stack.extend(by_corr.get(e.correlation_id, []))
    nodes = {eid: Node(events[eid][1], events[eid][0]) for eid in members}
    roots = []
    for eid, node in nodes.items():
        parent = node.event.causation_id
        if parent in nodes:
            nodes[parent].children.append(node)
        else:
            roots.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: (n.event.timestamp, n.event.id))
    roots.sort(key=lambda n: (n.event.timestamp, n.event.id))
    return roots


def render_tree(roots: list[Node]) -> str:
    """A plain-text tree: type, id, topic, state and the time since the parent."""
    lines: list[str] = []

    def walk(node: Node, prefix: str, last: bool, parent_ts: float | None, top: bool) -> None:
        e = node.event
        hop = "" if parent_ts is None else f"  +{e.timestamp - parent_ts:.3f}s"
        branch = "" if top else ("└─ " if last else "├─ ")
        orphan = "  (cause not found)" if top and e.causation_id else ""
        lines.append(f"{prefix}{branch}{e.type}  {e.id}  [{node.state}]{hop}{orphan}")
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        for i, c in enumerate(node.children):
            walk(c, child_prefix, i == len(node.children) - 1, e.timestamp, False)

    for r in roots:
        walk(r, "", True, None, True)
    return "\n".join(lines)
