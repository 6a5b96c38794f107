"""``poetctl state``: function state and history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import PoetError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

state_app = typer.Typer(
    help="Show function state (current version and history); rebuild it from the events.", no_args_is_help=True
)

ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="local_only or nats: the spool's state/ or the POET_FUNCTIONS KV bucket."),
]


def _store(mode: str | None, spool: Path | None, config: Path | None) -> tuple[Any, Any]:
    """The function-state store of this mode, and what to close after (None for the spool)."""
    from .mode import resolve_mode

    cfg = load(spool, config)
    if resolve_mode(mode, cfg) == "nats":
        from .mode import nats_transport

        t = nats_transport(cfg)
        try:
            return t.storage().state, t
        except BaseException:
            t.close()
            raise
    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.storage import StateStore

    return StateStore(SpoolLayout(cfg.spool).require()), None


@state_app.command("show")
def state_show(
    function_name: Annotated[str, typer.Argument(metavar="FN", help="Function name, e.g. detect_drift.")],
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Print FN's current state and its version history (66 if FN has no state).

    Never follows a link: a state/FN, history/ or state file that is a
    symlink is refused with one line and exit 74 (65: not valid JSON).
    """
    _show(function_name, output, spool, config, mode)


@state_app.command("list")
def state_list(
    output: OutputOpt = None, spool: SpoolOpt = None, config: ConfigOpt = None, mode: ModeOpt = None
) -> None:
    """List functions that have state, with their current version.

    A function whose state is a link or damaged is reported on stderr and
    left out; the exit code is then 74 (65: not valid JSON).
    """
    _list(output, spool, config, mode)


@state_app.command("rebuild")
def state_rebuild(
    apply: Annotated[
        bool, typer.Option("--apply", help="Replace the live state with the rebuilt one (atomically).")
    ] = False,
    output: OutputOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Rebuild state/ and feedback/ from the event history alone; print the differences from the live state.

    Every processed event is replayed, oldest first, through the built-in
    handlers that keep state (function state, the ML-monitoring handlers and
    the learning engine, as [builtin_handlers] and [learning] say), into an
    empty store; their follow-ups are dropped (they are in the history) and
    integrations and handler modules never run. Old schema versions go
    through the upcasters of poet.toml's handler modules. Then the rebuilt
    state is compared with the live one, one line per difference:
    "- PATH: VALUE" only live, "+ PATH: VALUE" only rebuilt, "~ PATH: LIVE -> REBUILT".

    --apply replaces state/ and feedback/ with the rebuilt ones, each in one
    atomic exchange; the old ones are kept in run/state-replaced-<time>/.
    No daemon may be running (exit 75 if one is).

    What the events cannot give back: events pruned from processed/, and the
    finished handlers of dead-lettered events.

    Exit codes: 0 no differences (or --apply done), 1 differences (not
    applied), 66 no spool, 74 I/O error, 75 a daemon is running (--apply).
    """
    _rebuild(apply, output, spool, config)


@errors_to_exit
def _rebuild(apply: bool, output: str | None, spool: Path | None, config: Path | None) -> None:
    import sys
    import time

    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.state_swap import discard, replace_state, work_layout
    from ..backends.fs.status import FsStatus
    from ..backends.fs.storage import FsStorage
    from ..daemon.loader import load_handlers
    from ..limits import Backpressure
    from ..ops.rebuild import diff, history, replay, snapshot
    from ..router import EventRouter
    from .output import resolve_format, write_json, write_jsonl

    fmt = resolve_format(output)
    cfg = load(spool, config)
    layout = SpoolLayout(cfg.spool).require()
    if apply:
        lease = float(cfg.daemon.get("lease_seconds", 30.0))
        alive = [d for d in FsStatus(layout).figures(time.time(), lease, lease)["daemons"] if d["alive"]]
        if alive:
            raise Backpressure(
                f"a daemon is running on this spool ({alive[0].get('owner')}): stop it before --apply, "
                "or its writes could be lost in the swap"
            )
    router = EventRouter(config=cfg, create_spool=False)
    load_handlers(router, list(cfg.handlers))  # only for their upcasters: nothing subscribed here runs
    events = history(router.transport)
    work = work_layout(layout, inside=apply)
    kept = None
    try:
        counts = replay(cfg, events, FsStorage(work), router.upcasters)
        lines = list(diff(snapshot(FsStorage(layout), tolerant=True), snapshot(FsStorage(work))))
        if apply:
            kept, atomic = replace_state(layout, work)
            if not atomic:
                sys.stderr.write(
                    "poetctl: warning: this system cannot exchange directories atomically; swapped by renames\n"
                )
    finally:
        if kept is None:
            discard(work)
    doc = {
        **counts,
        "differences": len(lines),
        "diff": lines,
        "applied": apply,
        "old_state": str(kept) if kept else None,
    }
    if fmt == "json":
        write_json(doc)
    elif fmt == "jsonl":
        write_jsonl([doc])
    else:
        out = sys.stdout
        for line in lines:
            out.write(line + "\n")
        what = (
            "replaced the live state" if apply else ("no differences" if not lines else f"{len(lines)} difference(s)")
        )
        out.write(
            f"rebuilt from {counts['events']} processed event(s) ({counts['handled']} handler runs, "
            f"{counts['failed']} failed): {what}" + (f"; the old state is in {kept}" if kept else "") + "\n"
        )
    if lines and not apply:
        raise typer.Exit(1)


@errors_to_exit
def _show(fn: str, output: str | None, spool: Path | None, config: Path | None, mode: str | None = None) -> None:
    from .output import console, emit_rows, resolve_format, styled, write_json, write_jsonl

    fmt = resolve_format(output)
    store, closing = _store(mode, spool, config)
    try:
        current = store.require(fn)
        history = store.history(fn)
    finally:
        if closing is not None:
            closing.close()
    if fmt == "json":
        write_json({"current": current, "history": history})
    elif fmt == "jsonl":
        write_jsonl([{"current": current, "history": history}])
    else:
        previous = current.get("previous_version") or "-"
        console().print(styled((fn, "bold"), f" version {current.get('version')} (previous {previous})"))
        emit_rows(
            "table",
            ["version", "previous_version", "updated_at", "reason", "event_id"],
            [{**h, "reason": h.get("reason"), "updated_at": _iso(h.get("updated_at"))} for h in history],
            title="History",
        )


@errors_to_exit
def _list(output: str | None, spool: Path | None, config: Path | None, mode: str | None = None) -> None:
    from .output import emit_rows, resolve_format, warn

    fmt = resolve_format(output)
    store, closing = _store(mode, spool, config)
    rows = []
    failed: PoetError | None = None
    try:
        for fn in store.functions():
            try:
                cur = store.current(fn) or {}
            except PoetError as exc:
                # A linked or damaged state file: reported (one line) and left out; the others still list.
                warn(str(exc))
                failed = failed or exc
                continue
            rows.append({"function_name": fn, "version": cur.get("version"), "updated_at": _iso(cur.get("updated_at"))})
    finally:
        if closing is not None:
            closing.close()
    emit_rows(fmt, ["function_name", "version", "updated_at"], rows, title="Functions")
    if failed is not None:
        raise typer.Exit(failed.exit_code)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError, TypeError):
        return str(ts)  # no date can show it (a hand-made state file): the value itself
