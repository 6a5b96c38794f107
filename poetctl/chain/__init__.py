"""Connected events (``poetctl correlate``, the demo): collecting them, the forest, renderings, ``--expect``.

* :mod:`.forest`: what is connected to an id (the correlation group and
  causation links both ways, via the index when there is one) and the forest
  those events form.
* :mod:`.render`: text tree, JSON nodes, Graphviz dot, Mermaid.
* :mod:`.expect`: the ``--expect`` chain check.

Every walk is iterative, so chains of any length work.
"""

from __future__ import annotations

from .expect import ChainResult, check_chain, parse_duration, parse_steps
from .forest import (
    SCAN_BELOW,
    STATES,
    Node,
    OnDamaged,
    build_forest,
    collect,
    connected,
    iter_events,
    iter_found,
    walk,
    walk_depth,
)
from .render import INDENT_LIMIT, format_hop, render_tree, to_dot, to_json, to_mermaid

__all__ = [
    "INDENT_LIMIT",
    "SCAN_BELOW",
    "STATES",
    "ChainResult",
    "Node",
    "OnDamaged",
    "build_forest",
    "check_chain",
    "collect",
    "connected",
    "format_hop",
    "iter_events",
    "iter_found",
    "parse_duration",
    "parse_steps",
    "render_tree",
    "to_dot",
    "to_json",
    "to_mermaid",
    "walk",
    "walk_depth",
]
