"""``poetctl prune``: remove handled events and feedback past retention (cron-friendly: silent on success)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EX_IOERR, UsageError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

DEFAULT_DAYS = 30.0  # the seed's retention


def prune_cmd(
    days: Annotated[
        float, typer.Option("--days", help="Remove what is older than this many days (by event time).")
    ] = DEFAULT_DAYS,
    dead: Annotated[bool, typer.Option("--dead", help="Also prune dead letters (and their .error files).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; remove nothing.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print a summary.")] = False,
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove processed events and processed feedback older than --days, and tmp leftovers older than a day.

    Pending, in-flight, dead and corrupt events are never touched (dead ones
    only with --dead). Silent on success (for cron); -v, --dry-run or
    --output json print a summary. Never follows links, never deletes outside
    the spool: a spool directory that is a symlink is reported and skipped
    (exit 74 at the end). Exit 75 if another prune holds the lock, 66 no spool.

    Example (crontab): 17 3 * * *  poetctl --spool /var/lib/poet/pubsub prune --days 30
    """
    _prune(days, dead, dry_run, verbose, output, spool, config)


@errors_to_exit
def _prune(
    days: float, dead: bool, dry_run: bool, verbose: bool, output: str | None, spool: Path | None, config: Path | None
) -> None:
    from contextlib import nullcontext

    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.prune import Pruner, usable_index
    from ..backends.fs.selection import open_index
    from ..backends.fs.writer import spool_lock
    from ..ops.progress import Progress
    from .output import resolve_format, warn, write_json, write_jsonl

    if days < 0:
        raise UsageError(f"--days {days:g}: expected a number of days >= 0")
    fmt = resolve_format(output) if output is not None else None
    layout = SpoolLayout(load(spool, config).spool).require()
    with_index = usable_index(layout, locking=not dry_run)  # 74 if run/ is a link
    lock = nullcontext() if dry_run else spool_lock(layout, "prune", blocking=False)
    with lock:
        index = open_index(layout, warn) if with_index else None
        if not with_index:
            warn(f"{layout.root / 'index'} is a symlink or not a directory; not used (listing directories instead)")
        try:
            with Progress("prune") as bar:
                if bar.enabled and index is not None:
                    cutoff = time.time() - days * 86400
                    (expired,) = index.db.execute(
                        "SELECT count(*) FROM events WHERE state='processed' AND ts < ?", (cutoff,)
                    ).fetchone()
                    bar.set_total(expired)
                report = Pruner(
                    layout, days, index=index, dead=dead, dry_run=dry_run, warn=warn, advance=bar.advance
                ).run()
        finally:
            if index is not None:
                index.close()
    doc = report.to_dict()
    if fmt == "json":
        write_json(doc)
    elif fmt == "jsonl":
        write_jsonl([doc])
    elif fmt == "table" or verbose or dry_run:
        would = "would remove" if dry_run else "removed"
        sys.stdout.write(
            f"prune: {would} {report.processed} processed event(s), {report.feedback} feedback record(s), "
            f"{report.tmp} tmp file(s)"
            + (f", {report.dead} dead letter(s) and {report.dead_errors} .error file(s)" if dead else "")
            + f" older than {days:g} day(s) in {report.seconds:.1f}s"
            + (f"; {report.skipped} left alone, {report.damaged} damaged" if report.skipped or report.damaged else "")
            + "\n"
        )
    if report.linked or not with_index:
        raise typer.Exit(EX_IOERR)  # each linked directory was reported on stderr and skipped
