"""``poetctl replay``: run the handlers again on past events. Also the selector options ``dead`` shares."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import NoMatch, UsageError
from .common import ConfigOpt, ModeOpt, SpoolOpt, errors_to_exit, load

SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Events at or after this time: 15m, 2h, 3d or RFC 3339.", show_default=False),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Events before this time (same forms as --since).", show_default=False)
]
TypeOpt = Annotated[
    list[str] | None, typer.Option("--type", help="Event type or glob (drift.*); repeatable.", show_default=False)
]
TopicOpt = Annotated[
    list[str] | None, typer.Option("--topic", help="Topic pattern (poet/functions/*); repeatable.", show_default=False)
]
CorrOpt = Annotated[
    str | None, typer.Option("--correlation-id", help="Events with this correlation id.", show_default=False)
]
IdOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--id", help="Event id; repeatable; - reads ids (or JSON lines with an id) from stdin.", show_default=False
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Select every event (needed when no selector is given).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only list what would be done.")]

SELECTOR_HELP = "--since/--until/--type/--topic/--correlation-id/--id"


def criteria(
    since: str | None,
    until: str | None,
    types: list[str] | None,
    topics: list[str] | None,
    correlation_id: str | None,
    ids: list[str] | None,
) -> Any:
    from ..ops.selectors import Criteria

    return Criteria(since, until, types or [], topics or [], correlation_id, ids or [])


def warn_damaged(path: Path, why: str) -> None:
    from .output import warn

    where = str(path)
    warn(
        f"{why if why.startswith(where) else f'{where}: {why}'}; skipped ('poetctl fsck --repair' quarantines "
        "damaged files)"
    )


def selected(
    layout: Any, state: str, crit: Any, all_: bool, index: Any, verb: str, require: bool = True
) -> tuple[Any, list[Any], Callable[[], Iterator[Any]]]:
    """Selector, candidates and a lazy resolver for ``state``; usage errors for missing/conflicting selectors."""
    from ..ops.selectors import candidates, make_selector, resolve

    if require and crit.empty() and not all_:
        raise UsageError(f"{verb} needs a selector ({SELECTOR_HELP}) or --all")
    if all_ and not crit.empty():
        raise UsageError("--all selects every event; give either --all or selectors")
    sel = make_selector(crit)
    cands, _source = candidates(layout, state, sel, index)
    return sel, cands, lambda: resolve(cands, state, sel, warn_damaged)


def report_missing(layout: Any, state: str, sel: Any, got: set[str]) -> None:
    from ..ops.selectors import missing_ids
    from .output import warn

    for eid, why in missing_ids(layout, state, sel.ids, got):
        warn(f"{eid}: {why}")


def replay_cmd(
    since: SinceOpt = None,
    until: UntilOpt = None,
    types: TypeOpt = None,
    topics: TopicOpt = None,
    correlation_id: CorrOpt = None,
    ids: IdOpt = None,
    from_state: Annotated[
        str, typer.Option("--from", help="Where to take the events from: processed or dead.")
    ] = "processed",
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    mode: ModeOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the handlers again on past events (ids are kept); prints the replayed ids.

    The selected events move back to pending with metadata.replayed = {at, count,
    from} and their completion records reset, so every handler runs once more
    (follow-up events keep their derived ids and are deduplicated). Safe while a
    daemon runs. Exit 1 if nothing matched, 2 bad selectors, 66 no spool.

    With --mode nats (or POET_MODE / delivery_mode nats) the events are
    published to the stream again, same ids and mark (69: NATS unreachable).

    Examples:

      poetctl replay --since 2h --type drift.detected

      poetctl replay --from dead --id 0194f0c2-...  --dry-run

      poetctl tail -o jsonl --state processed --type drift.detected --since 1h | poetctl replay --id -
    """
    _replay(
        criteria(since, until, types, topics, correlation_id, ids), from_state, all_, dry_run, spool, config, mode=mode
    )


@errors_to_exit
def _replay(
    crit: Any,
    from_state: str,
    all_: bool,
    dry_run: bool,
    spool: Path | None,
    config: Path | None,
    keep_done: bool = False,
    mode: str | None = None,
) -> None:
    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.replay import BATCH, Requeuer, refuse_links
    from ..ops.progress import Progress
    from ..ops.selectors import check_state, open_index
    from .output import warn

    check_state(from_state)
    cfg = load(spool, config)
    from .mode import resolve_mode

    if resolve_mode(mode, cfg) == "nats":
        from .views_nats import replay_nats

        replay_nats(cfg, crit, from_state, all_, dry_run)
        return
    layout = SpoolLayout(cfg.spool).require()
    refuse_links(layout, from_state)  # 74 before anything is read through a linked spool directory
    index = open_index(layout, warn)
    try:
        sel, cands, resolved = selected(layout, from_state, crit, all_, index, "replay")
        out = sys.stdout
        got: set[str] = set()
        done = 0
        with (
            Progress("replay", total=len(cands)) as bar,
            Requeuer(
                layout, from_state, index=index, max_bytes=cfg.max_event_bytes, warn=warn, keep_done=keep_done
            ) as mover,
        ):
            batch: list[Any] = []

            def flush() -> int:
                if dry_run:
                    ids = [f.id for f in batch]
                else:
                    res = mover.requeue(batch)
                    for eid, why in res.skipped:
                        warn(f"{eid}: not replayed: {why}")
                    ids = res.moved
                if ids:
                    out.write("".join(i + "\n" for i in ids))
                    out.flush()
                bar.advance(len(batch))
                batch.clear()
                return len(ids)

            for f in resolved():
                got.add(f.id)
                batch.append(f)
                if len(batch) >= BATCH:
                    done += flush()
            if batch:
                done += flush()
        report_missing(layout, from_state, sel, got)
        if not done:
            what = "would be replayed" if dry_run else "was replayed"
            raise NoMatch(
                f"nothing {what}: no {from_state} event matched"
                if not got
                else f"nothing {what} ({len(got)} matched but were skipped, see above)"
            )
        if sys.stderr.isatty():
            sys.stderr.write(f"{'would replay' if dry_run else 'replayed'} {done} event(s) from {from_state}/\n")
    finally:
        if index is not None:
            index.close()
