"""Connected events (``poetctl correlate``, the demo): collecting them, the forest, renderings, ``--expect``.

* :mod:`poetctl.backends.fs.connected`: what is connected to an id on the
  spool (the correlation group and causation links both ways, via the index
  when there is one); its names are importable from here (loaded on first use).
* :mod:`.forest`: the forest those events form.
* :mod:`.render`: text tree, JSON nodes, Graphviz dot, Mermaid.
* :mod:`.expect`: the ``--expect`` chain check.

Every walk is iterative, so chains of any length work.
"""

from __future__ import annotations

from .expect import ChainResult, check_chain, parse_duration, parse_steps
from .forest import STATES, Node, OnDamaged, build_forest, walk, walk_depth
from .render import INDENT_LIMIT, format_hop, render_tree, to_dot, to_json, to_mermaid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..backends.fs.connected import SCAN_BELOW, collect, connected, iter_events, iter_found

_ON_THE_SPOOL = ("SCAN_BELOW", "collect", "connected", "iter_events", "iter_found")


def __getattr__(name: str) -> Any:
    """The spool-reading names live in :mod:`poetctl.backends.fs.connected` (imported on first use)."""
    if name in _ON_THE_SPOOL:
        from ..backends.fs import connected as on_the_spool

        return getattr(on_the_spool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
