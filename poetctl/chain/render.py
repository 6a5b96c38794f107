"""Renderings of a forest of connected events: text tree, JSON nodes, Graphviz dot, Mermaid.

All of them walk the forest with an explicit stack, so a causal chain of any
length renders (the recursion these replaced failed at ~1,000 hops, and
orjson refuses documents nested deeper than 254 levels).

* The text tree indents one step per hop up to :data:`INDENT_LIMIT` hops;
  deeper nodes keep that indentation and show their depth (``├─[65] ...``),
  so a 10,000-hop chain prints 10,000 lines of bounded width instead of
  150 MB of indentation. A node's parent is the nearest line above it with
  one depth less.
* JSON is a flat list of nodes in depth-first order, each naming its
  ``parent`` (None for a root), ``depth`` and ``children`` (ids): any chain
  length, and parseable by tools with a nesting limit (Python's json, jq).
* Text that reaches a terminal is cleaned of control characters (see
  :mod:`poetctl.cli.output`); JSON stays exact.
"""

from __future__ import annotations

import math

from ..ids import lazy_pattern
from ..safetext import clean
from ..timeparse import iso, iso_or_none
from .forest import Node, walk, walk_depth

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Hops of indentation in the text tree; deeper nodes show "[depth]" instead of indenting further.
INDENT_LIMIT = 32


def format_hop(seconds: float) -> str:
    """A short signed duration: +17ms, +2.350s, +3m05s, +2h03m, +1d04h (``+?`` if not finite)."""
    if not math.isfinite(seconds):
        return "+?"
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
    if s < 86400 * 1e6:
        return f"{sign}{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"
    return f"{sign}{s:.3g}s"  # absurd times on disk: keep the line short


def _hop(child_ts: float, parent_ts: float) -> float:
    try:
        return float(child_ts - parent_ts)
    except OverflowError:  # int - int cannot overflow, float(huge int) can
        return math.inf


def render_tree(roots: list[Node]) -> str:
    """A plain-text tree: type, id, state, time and the hop from the parent; missing causes flagged.

    Values are as stored: print it through :func:`poetctl.cli.output.write_line`,
    which escapes control characters.
    """
    lines: list[str] = []
    # prefixes[d]: the indentation drawn for a child at depth d+1 (kept only along the current path).
    prefixes: list[str] = [""]
    for node, parent, depth, last in walk_depth(roots):
        e = node.event
        hop = "" if parent is None else f"  {format_hop(_hop(e.timestamp, parent.event.timestamp))}"
        orphan = f"  (cause {node.missing_cause} not found)" if node.missing_cause else ""
        if depth == 0:
            prefix, branch = "", ""
        else:
            prefix = prefixes[min(depth, INDENT_LIMIT) - 1]
            branch = "└─" if last else "├─"
            branch += " " if depth <= INDENT_LIMIT else f"[{depth}] "
        lines.append(f"{prefix}{branch}{e.type}  {e.id}  [{node.state}]  {iso(e.timestamp)}{hop}{orphan}")
        if depth < INDENT_LIMIT:
            child_prefix = "" if depth == 0 else prefix + ("   " if last else "│  ")
            del prefixes[depth:]
            prefixes.append(child_prefix)
    return "\n".join(lines)


def to_json(roots: list[Node]) -> list[dict[str, Any]]:
    """Flat nodes in depth-first order: id, type, topic, state, timestamp, time (None if no date can
    show it), source, causation_id, correlation_id, parent (tree parent id, None for roots), depth,
    hop_seconds (None for roots), orphan, children (ids)."""
    out: list[dict[str, Any]] = []
    for node, parent, depth, _last in walk_depth(roots):
        e = node.event
        hop = None
        if parent is not None:
            h = _hop(e.timestamp, parent.event.timestamp)
            hop = round(h, 6) if math.isfinite(h) else None
        out.append(
            {
                "id": e.id,
                "type": e.type,
                "topic": e.topic,
                "state": node.state,
                "timestamp": e.timestamp,
                "time": iso_or_none(e.timestamp),
                "source": e.source,
                "causation_id": e.causation_id,
                "correlation_id": e.correlation_id,
                "parent": None if parent is None else parent.event.id,
                "depth": depth,
                "hop_seconds": hop,
                "orphan": node.orphan,
                "children": [c.event.id for c in node.children],
            }
        )
    return out


def _visible(text: str) -> str:
    """Control characters (newlines included) as visible escapes: labels are printed on terminals too."""
    return clean(text)


def _dot_str(text: str) -> str:
    return '"' + _visible(text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) + '"'


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
            hop = format_hop(_hop(e.timestamp, parent.event.timestamp))
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


_MERMAID_UNSAFE = lazy_pattern(r'["<>#&\[\]{}()|`]')


def _mermaid_text(text: str) -> str:
    # Entity codes keep labels inside the quotes valid whatever the id or type contains.
    return _MERMAID_UNSAFE.sub(lambda m: f"#{ord(m.group())};", _visible(text))


def to_mermaid(roots: list[Node]) -> str:
    """A Mermaid flowchart (``graph TD``); node labels are "type<br/>id" with the whole id.

    Whole ids, not prefixes: a prefix that tells the drawn events apart can
    still match an event that is not drawn (or a missing cause), and a reader
    copies the id from the label into ``poetctl correlate`` or ``tail``.
    """
    names: dict[int, str] = {}
    lines = ["graph TD"]
    edges: list[str] = []
    ghosts: dict[str, str] = {}
    for node, parent in walk(roots):
        e = node.event
        name = names[id(node)] = f"n{len(names)}"
        lines.append(f'  {name}["{_mermaid_text(e.type)}<br/>{_mermaid_text(e.id)}"]')
        if parent is not None:
            hop = format_hop(_hop(e.timestamp, parent.event.timestamp))
            edges.append(f'  {names[id(parent)]} -->|"{_mermaid_text(hop)}"| {name}')
        if node.missing_cause:
            g = ghosts.get(node.missing_cause)
            if g is None:
                # One ghost per missing cause: siblings of one lost cause hang from the same box.
                g = ghosts[node.missing_cause] = f"m{len(ghosts)}"
                lines.append(f'  {g}["cause {_mermaid_text(node.missing_cause)} not found"]:::missing')
            edges.append(f"  {g} -.-> {name}")
    lines.extend(edges)
    if ghosts:
        lines.append("  classDef missing stroke-dasharray: 5 5,stroke:#c00,color:#c00;")
    return "\n".join(lines)
