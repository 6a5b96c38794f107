"""``poetctl dead list|show|retry|purge``: the dead-letter queue, with replay's selectors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import NoMatch, UsageError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load
from .replay import (
    AllOpt,
    CorrOpt,
    DryRunOpt,
    IdOpt,
    SinceOpt,
    TopicOpt,
    TypeOpt,
    UntilOpt,
    criteria,
    report_missing,
    selected,
)

dead_app = typer.Typer(
    name="dead",
    no_args_is_help=True,
    help="Manage the dead-letter queue (events/dead): list, show, retry, purge.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="local_only or nats: the spool's dead/ or the NATS DLQ stream (default: POET_MODE)."),
]


def _nats_config(mode: str | None, spool: Path | None, config: Path | None) -> Any:
    """The config when this command runs in nats mode (the DLQ stream), else None (the spool)."""
    from .mode import resolve_mode

    cfg = load(spool, config)
    return cfg if resolve_mode(mode, cfg) == "nats" else None


def _open(spool: Path | None, config: Path | None, with_index: bool = False) -> tuple[Any, Any, Any]:
    """Config, layout (66 if there is no spool) and, when asked, the index (None if absent)."""
    from ..backends.fs.dead import refuse_links
    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.selection import open_index
    from .output import warn

    cfg = load(spool, config)
    layout = SpoolLayout(cfg.spool).require()
    refuse_links(layout)  # 74 before anything is read through a linked events/, dead/ or index/
    return cfg, layout, open_index(layout, warn) if with_index else None


def _iso(ts: Any) -> str | None:
    """dead_at as a date; the number itself if no date can show it; None if it is not a number."""
    from ..timeparse import iso

    return iso(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None


def _order(row: dict[str, Any]) -> tuple[float, str]:
    # .error files are written by the daemon, but a hand-made one must not break the sort.
    t = row["dead_at"]
    try:
        key = float(t) if isinstance(t, int | float) and not isinstance(t, bool) else 0.0
    except OverflowError:
        key = float("inf") if t > 0 else float("-inf")
    return key, row["id"]


@dead_app.command("list")
def list_cmd(
    since: SinceOpt = None,
    until: UntilOpt = None,
    types: TypeOpt = None,
    topics: TopicOpt = None,
    correlation_id: CorrOpt = None,
    ids: IdOpt = None,
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """List dead letters: id, type, reason, attempts, last error, dead_at (oldest first).

    Exit 1 if selectors were given and nothing matched (an empty queue without
    selectors is exit 0).

    Example: poetctl dead list --type drift.* -o jsonl
    """
    _list(criteria(since, until, types, topics, correlation_id, ids), output, spool, config, mode)


@errors_to_exit
def _list(crit: Any, output: str | None, spool: Path | None, config: Path | None, mode: str | None = None) -> None:
    from ..backends.fs.dead import entries
    from .output import emit_rows, resolve_format

    fmt = resolve_format(output)
    if (cfg := _nats_config(mode, spool, config)) is not None:
        from .dead_nats import list_letters

        list_letters(cfg, crit, fmt)
        return
    _, layout, index = _open(spool, config)
    try:
        sel, _, resolved = selected(layout, "dead", crit, False, None, "dead list", require=False)
        rows = [e.row() for e in entries(layout, resolved())]
    finally:
        if index is not None:
            index.close()
    rows.sort(key=_order)
    report_missing(layout, "dead", sel, {r["id"] for r in rows})
    if fmt == "table":
        table = [{**r, "dead_at": _iso(r["dead_at"]), "error": _short(r["error"])} for r in rows]
        emit_rows(
            fmt, ["id", "type", "reason", "attempts", "error", "dead_at"], table, title=f"{len(rows)} dead letter(s)"
        )
    else:
        emit_rows(fmt, [], rows)
    if not rows and not crit.empty():
        raise NoMatch("no dead letter matched")


def _short(text: Any, n: int = 80) -> str | None:
    if not isinstance(text, str):
        return None
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= n else line[: n - 1] + "…"


@dead_app.command("show")
def show_cmd(
    event_id: Annotated[str, typer.Argument(metavar="ID", help="The dead event's id.")],
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Print a dead event and its error record as {"event": ..., "error": ...}.

    Exit 1 if there is no dead event with that id (the message says where it is).

    Example: poetctl dead show 0194f0c2-7c1d-7a2b-9c1e-1f2a3b4c5d6e
    """
    _show(event_id, output, spool, config, mode)


@errors_to_exit
def _show(event_id: str, output: str | None, spool: Path | None, config: Path | None, mode: str | None = None) -> None:
    from ..backends.fs.query import load as load_found
    from ..backends.fs.replay import read_error
    from ..backends.fs.selection import missing_ids
    from ..ids import EVENT_ID_RE
    from .output import resolve_format, write_json, write_jsonl

    fmt = resolve_format(output, tty_default="json")
    if not EVENT_ID_RE.match(event_id):
        raise UsageError(f"{event_id!r} is not an event id (expected {EVENT_ID_RE.pattern})")
    if (cfg := _nats_config(mode, spool, config)) is not None:
        from .dead_nats import show_letter

        show_letter(cfg, event_id, fmt)
        return
    _, layout, index = _open(spool, config)
    if index is not None:
        index.close()
    damaged: list[str] = []
    f = load_found(layout.dead / f"{event_id}.json", "dead", lambda p, why: damaged.append(why))
    if f is None:
        if damaged:
            raise NoMatch(f"dead event {event_id} is damaged: {damaged[0]} ('poetctl fsck --repair' quarantines it)")
        why = missing_ids(layout, "dead", [event_id], set())[0][1]
        raise NoMatch(f"no dead event {event_id}: {why}")
    doc = {"event": f.event.to_dict(), "error": read_error(layout, event_id)}
    if fmt == "jsonl":
        write_jsonl([doc])
    else:
        write_json(doc)


@dead_app.command("retry")
def retry_cmd(
    since: SinceOpt = None,
    until: UntilOpt = None,
    types: TypeOpt = None,
    topics: TopicOpt = None,
    correlation_id: CorrOpt = None,
    ids: IdOpt = None,
    all_: AllOpt = False,
    all_handlers: Annotated[
        bool,
        typer.Option("--all-handlers", help="Run every handler again, also those that had finished."),
    ] = False,
    dry_run: DryRunOpt = False,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Move dead letters back to pending with fresh attempts; prints their ids.

    Only the handlers that had not finished run again (the dead letter's
    handlers_done are kept), so a message already sent is not sent twice;
    --all-handlers runs every handler, like 'poetctl replay --from dead'. The
    error's summary moves into metadata.replayed.error and dead/<id>.error is
    removed. Needs selectors or --all. Exit 1 if nothing matched.

    Example: poetctl dead retry --type drift.detected --since 1d
    """
    crit = criteria(since, until, types, topics, correlation_id, ids)
    _retry(crit, all_, all_handlers, dry_run, spool, config, mode)


@errors_to_exit
def _retry(
    crit: Any,
    all_: bool,
    all_handlers: bool,
    dry_run: bool,
    spool: Path | None,
    config: Path | None,
    mode: str | None,
) -> None:
    if (cfg := _nats_config(mode, spool, config)) is not None:
        from .dead_nats import retry_letters

        retry_letters(cfg, crit, all_, dry_run)
        return
    from .replay import _replay

    _replay(crit, "dead", all_, dry_run, spool, config, keep_done=not all_handlers, mode="local_only")


@dead_app.command("purge")
def purge_cmd(
    since: SinceOpt = None,
    until: UntilOpt = None,
    types: TypeOpt = None,
    topics: TopicOpt = None,
    correlation_id: CorrOpt = None,
    ids: IdOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Delete dead letters (event + .error) for good; prints their ids.

    Needs selectors or --all (which also removes .error files whose event is
    gone). Regular files only: links are never followed. Exit 1 if nothing
    matched.

    Example: poetctl dead purge --until 30d --dry-run
    """
    _purge(criteria(since, until, types, topics, correlation_id, ids), all_, dry_run, spool, config, mode)


@errors_to_exit
def _purge(
    crit: Any, all_: bool, dry_run: bool, spool: Path | None, config: Path | None, mode: str | None = None
) -> None:
    from ..backends.fs.dead import orphan_errors, purge
    from .output import warn

    if (cfg := _nats_config(mode, spool, config)) is not None:
        from .dead_nats import purge_letters

        purge_letters(cfg, crit, all_, dry_run)
        return

    _, layout, index = _open(spool, config, with_index=True)
    try:
        sel, _, resolved = selected(layout, "dead", crit, all_, None, "dead purge")
        ids = [f.id for f in resolved()]
        orphans = orphan_errors(layout) if all_ else []
        report_missing(layout, "dead", sel, set(ids))
        if dry_run:
            done = ids + [o for o in orphans if o not in ids]
        else:
            res = purge(layout, ids, index, warn, orphans=orphans)
            for eid, why in res.skipped:
                warn(f"{eid}: not purged: {why}")
            done = res.purged
    finally:
        if index is not None:
            index.close()
    if done:
        sys.stdout.write("".join(i + "\n" for i in dict.fromkeys(done)))
        sys.stdout.flush()
    else:
        raise NoMatch(
            "nothing would be purged: no dead letter matched"
            if dry_run
            else "nothing was purged: no dead letter matched"
        )
