"""``poetctl state``: function state and history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import PoetError
from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

state_app = typer.Typer(help="Show function state (current version and history).", no_args_is_help=True)

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
