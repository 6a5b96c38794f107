"""``poetctl replay`` and ``poetctl correlate`` in nats mode: the same output and exit codes as on the spool."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import NoMatch, UsageError


def replay_nats(cfg: Any, crit: Any, from_state: str, all_: bool, dry_run: bool) -> None:
    """Publish the selected processed (or dead) events again; prints their ids (see :func:`~.query.requeue`)."""
    from ..backends.nats import query
    from ..ops.selectors import make_selector
    from .mode import nats_transport
    from .output import warn
    from .replay import SELECTOR_HELP

    if crit.empty() and not all_:
        raise UsageError(f"replay needs a selector ({SELECTOR_HELP}) or --all")
    if all_ and not crit.empty():
        raise UsageError("--all selects every event; give either --all or selectors")
    sel = make_selector(crit)
    t = nats_transport(cfg)  # the daemon's partition key: a replayed event lands on its key's partition
    try:
        found = sorted(query.newest(t, sel, (from_state,)), key=lambda s: (s.timestamp, s.id))
        got = {s.id for s in found}
        if dry_run:
            ids = [s.id for s in found]
        else:
            ids, skipped = query.requeue(t, found, from_state, t.clock(), cfg.max_event_bytes, warn)
            for eid, why in skipped:
                warn(f"{eid}: not replayed: {why}")
        missing = [i for i in sel.ids if i not in got]
        for eid, state in ((i, query.states_of(t, [i]).get(i)) for i in missing):
            warn(f"{eid}: no such event in NATS" if state is None else f"{eid}: it is {state}, not {from_state}")
    finally:
        t.close()
    if ids:
        sys.stdout.write("".join(i + "\n" for i in ids))
        sys.stdout.flush()
    if not ids:
        what = "would be replayed" if dry_run else "was replayed"
        raise NoMatch(
            f"nothing {what}: no {from_state} event matched"
            if not got
            else f"nothing {what} ({len(got)} matched but were skipped, see above)"
        )
    if sys.stderr.isatty():
        sys.stderr.write(f"{'would replay' if dry_run else 'replayed'} {len(ids)} event(s) from {from_state}\n")


def connected_nats(cfg: Any, ident: str) -> tuple[list[Any], str]:
    """The forest connected to ``ident`` in the stream (``poetctl correlate``), and where it was looked for."""
    from ..backends.nats import query
    from ..chain.forest import build_forest, members_of
    from ..query import Found
    from .mode import nats_transport

    t = nats_transport(cfg)
    try:
        seen = query.everything(t)
        where = f"NATS {t.settings.shown_servers()} stream {t.settings.stream}"
    finally:
        t.close()
    events = {i: Found(s.timestamp, s.id, s.state, Path(str(s.path)), s.event, s.raw) for i, s in seen.items()}
    return build_forest(members_of(events, ident)), where


__all__ = ["connected_nats", "replay_nats"]
