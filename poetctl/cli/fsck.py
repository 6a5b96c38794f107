"""``poetctl fsck [--repair]``: check every file of the spool; quarantine, requeue and rebuild with --repair."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import EX_IOERR, EX_NOPERM
from ..safetext import clean
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load


def fsck_cmd(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Quarantine damaged files, requeue stale in-flight events, remove leftovers and rebuild the index.",
        ),
    ] = False,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Keep this run's findings in run/fsck.json (metrics and the fsck-loss alert read it); "
            "--repair always keeps them.",
        ),
    ] = False,
    tmp_age: Annotated[
        str, typer.Option("--tmp-age", help="Writer leftovers older than this are orphans (15m, 2h, 1d).")
    ] = "1h",
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check every file: checksum, schema and placement of events, stale in-flight events, leftovers, index drift.

    Without --repair or --record nothing in the spool is written. Ends with a
    report (one problem per row; JSON lines in a pipe). Exit 0
    clean (or everything repaired), 1 problems remain, 66 no spool, 77 (74) a part
    of the spool could not be read for lack of permission (an I/O error). Safe while
    daemons run; a progress bar shows on a TTY.

    Examples:

      poetctl fsck

      poetctl fsck --repair -o json

      poetctl fsck --record -o json   (from cron: feeds the PoetctlMessageLoss alert)
    """
    _fsck(repair, record, tmp_age, output, spool, config)


@errors_to_exit
def _fsck(
    repair: bool, record: bool, tmp_age: str, output: str | None, spool: Path | None, config: Path | None
) -> None:
    from ..backends.fs.fsck import Fsck
    from ..backends.fs.layout import SpoolLayout
    from ..ops.progress import Progress
    from ..ops.status import parse_duration
    from ..schemas import SchemaRegistry
    from .output import emit_rows, resolve_format, write_json

    fmt = resolve_format(output)
    age = parse_duration(tmp_age, "--tmp-age")
    cfg = load(spool, config)
    layout = SpoolLayout(cfg.spool).require()
    lease = float(cfg.daemon.get("lease_seconds", 30.0))
    with Progress("fsck") as bar:
        report = Fsck(
            layout,
            SchemaRegistry(cfg.schema_paths),
            repair=repair,
            max_bytes=cfg.max_event_bytes,
            lease_seconds=lease,
            tmp_age=age,
            advance=bar.advance,
            set_total=bar.set_total,
        ).run()
    doc = report.to_dict()
    if repair or record:  # a plain check writes nothing into the spool
        from ..backends.fs.fsck_status import save_last

        save_last(layout.root, doc)  # for metrics and the fsck-loss alert (best effort)
    if fmt == "json":
        write_json(doc)
    else:
        rows: list[dict[str, Any]] = doc["problems"]
        if fmt == "table":
            if rows:
                emit_rows(
                    "table",
                    ["kind", "path", "detail", "action"],
                    [{**r, "action": r["action"] or ("-" if repair else "")} for r in rows],
                    title="fsck problems",
                )
        else:
            emit_rows("jsonl", [], rows)
        checked = ", ".join(f"{v} {k}" for k, v in doc["checked"].items()) or "nothing"
        line = f"fsck: checked {checked} in {doc['seconds']:.1f}s: " + (
            "clean"
            if not rows
            else f"{len(rows)} problem(s), {doc['repaired']} repaired, "
            f"{doc['unrepaired']} left" + ("" if repair else " (run with --repair to fix)")
        )
        (sys.stdout if fmt == "table" else sys.stderr).write(line + "\n")
    left = [r for r in doc["problems"] if r["kind"] in ("unreadable", "unreadable_dir") and not r["repaired"]]
    if left:
        # Parts of the spool went unchecked: that is a permission or I/O error, not "problems remain".
        denied = [r for r in left if "ermission" in str(r["detail"]) or "not permitted" in str(r["detail"])]
        first = (denied or left)[0]
        sys.stderr.write(
            f"poetctl: error: {clean(first['path'])}: {clean(first['detail'])} ({len(left)} unreadable; not checked)\n"
        )
        raise typer.Exit(EX_NOPERM if denied else EX_IOERR)
    if report.unrepaired:
        raise typer.Exit(1)
