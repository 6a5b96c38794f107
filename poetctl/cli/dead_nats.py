"""``poetctl dead list|show|retry|purge`` in nats mode: the same output and exit codes as on the spool."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import NoMatch, UsageError


def _transport(cfg: Any) -> Any:
    from .mode import nats_transport

    return nats_transport(cfg)  # with the daemon's partition key: a retry lands on its key's partition


def _where(t: Any, ids: list[str], found: set[str]) -> None:
    """Warn, per id asked for but not selected, where it is instead."""
    from .output import warn

    for eid in ids:
        if eid in found:
            continue
        state = t.state_of(eid)
        if state is None:
            warn(f"{eid}: no such event in NATS")
        elif state != "dead":
            warn(f"{eid}: it is {state.value}, not dead")
        else:
            warn(f"{eid}: it does not match the other selectors")


def _select(t: Any, crit: Any, verb: str, all_: bool, require: bool) -> tuple[Any, list[Any]]:
    from ..backends.nats.dead import letters
    from ..ops.selectors import make_selector
    from .output import warn
    from .replay import SELECTOR_HELP

    if require and crit.empty() and not all_:
        raise UsageError(f"{verb} needs a selector ({SELECTOR_HELP}) or --all")
    if all_ and not crit.empty():
        raise UsageError("--all selects every event; give either --all or selectors")
    sel = make_selector(crit)
    found = letters(t, sel, warn)
    _where(t, list(sel.ids), {x.event.id for x in found})
    return sel, found


def list_letters(cfg: Any, crit: Any, fmt: str) -> None:
    from .dead import _iso, _order, _short
    from .output import emit_rows

    t = _transport(cfg)
    try:
        _, found = _select(t, crit, "dead list", False, False)
    finally:
        t.close()
    rows = sorted((x.row() for x in found), key=_order)
    if fmt == "table":
        table = [{**r, "dead_at": _iso(r["dead_at"]), "error": _short(r["error"])} for r in rows]
        emit_rows(
            fmt, ["id", "type", "reason", "attempts", "error", "dead_at"], table, title=f"{len(rows)} dead letter(s)"
        )
    else:
        emit_rows(fmt, [], rows)
    if not rows and not crit.empty():
        raise NoMatch("no dead letter matched")


def show_letter(cfg: Any, event_id: str, fmt: str) -> None:
    from ..backends.nats.dead import letters
    from ..transport import Query
    from .output import write_json, write_jsonl

    t = _transport(cfg)
    try:
        found = letters(t, Query(ids=[event_id]))
        if not found:
            state = t.state_of(event_id)
            why = "no such event in NATS" if state is None else f"it is {state.value}"
            raise NoMatch(f"no dead event {event_id}: {why}")
    finally:
        t.close()
    letter = found[-1]
    doc = {"event": letter.event.to_dict(), "error": {"id": event_id, **letter.info}}
    if fmt == "jsonl":
        write_jsonl([doc])
    else:
        write_json(doc)


def retry_letters(cfg: Any, crit: Any, all_: bool, dry_run: bool) -> None:
    from ..backends.nats.dead import retry
    from .output import warn

    t = _transport(cfg)
    try:
        _, found = _select(t, crit, "dead retry", all_, True)
        ids = [x.event.id for x in found] if dry_run else retry(t, found, t.clock(), cfg.max_event_bytes, warn)
    finally:
        t.close()
    if not ids:
        raise NoMatch(f"nothing {'would be' if dry_run else 'was'} replayed: no dead event matched")
    sys.stdout.write("".join(i + "\n" for i in ids))
    sys.stdout.flush()


def purge_letters(cfg: Any, crit: Any, all_: bool, dry_run: bool) -> None:
    from ..backends.nats.dead import purge

    t = _transport(cfg)
    try:
        _, found = _select(t, crit, "dead purge", all_, True)
        ids = [x.event.id for x in found] if dry_run else purge(t, found)
    finally:
        t.close()
    if not ids:
        raise NoMatch(f"nothing {'would be' if dry_run else 'was'} purged: no dead letter matched")
    sys.stdout.write("".join(i + "\n" for i in dict.fromkeys(ids)))
    sys.stdout.flush()


__all__ = ["list_letters", "purge_letters", "retry_letters", "show_letter"]
