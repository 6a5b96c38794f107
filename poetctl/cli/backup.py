"""``poetctl backup`` and ``poetctl restore``: a consistent archive of a spool, and point-in-time recovery."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import ConfigOpt, ModeOpt, SpoolOpt, errors_to_exit, load


def backup_cmd(
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Archive to create (never overwritten).")],
    since: Annotated[
        Path | None,
        typer.Option(
            "--since",
            metavar="MANIFEST",
            help="Incremental: only what changed since this backup (its archive, or its manifest.json).",
        ),
    ] = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Archive the spool (events by state, state/, feedback/) while daemons run; prints the manifest summary.

    Each event is archived once, in a state it had during the backup
    (in-flight events as pending), its checksum verified; a dead event with
    its error record. Damaged files are left out and listed in the manifest.
    tar + zstd (gzip without the 'backup' extra), streamed member by member
    (memory does not grow with the events' size), with manifest.json last:
    counts per state, the sha256 of every file, poetctl version, time range.
    Exit 66 no spool, 74 I/O error, 2 DEST exists. With --mode nats: the
    events of the JetStream stream, each in its state, the dead letters'
    errors and the function-state KV bucket, in the same format (a NATS
    backup restores into a spool and a spool backup into NATS).
    """
    _backup(dest, since, spool, config, mode)


@errors_to_exit
def _backup(dest: Path, since: Path | None, spool: Path | None, config: Path | None, mode: str | None = None) -> None:
    import orjson

    from .. import __version__
    from ..backends.fs.backup import Archives, write_backup
    from ..backends.fs.layout import SpoolLayout
    from ..errors import InputMissing, InvalidData
    from .mode import resolve_mode

    cfg = load(spool, config)
    nats = resolve_mode(mode, cfg) == "nats"
    layout = None if nats else SpoolLayout(cfg.spool).require()
    base: dict[str, Any] | None = None
    if since is not None:
        try:
            head = since.read_bytes()[:4]
        except OSError as exc:
            raise InputMissing(f"cannot read {since}: {exc.strerror}") from None
        # An archive is verified as a stream (its members are not held): only its manifest is kept.
        base = orjson.loads(since.read_bytes()) if head.startswith(b"{") else Archives([since]).manifests[0]
        if not isinstance(base, dict) or not isinstance(base.get("files"), dict):
            raise InvalidData("not a poetctl backup manifest", where=str(since))
    if layout is not None:
        m = write_backup(layout, dest, max_bytes=cfg.max_event_bytes, version=__version__, since=base)
    else:
        m = _nats_backup(cfg, dest, base)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(m["counts"].items())) or "no events"
    sys.stdout.write(f"{dest}: {counts}; {len(m['files'])} file(s), {m['compression']}\n")
    for s in m["skipped"][:20]:
        sys.stderr.write(f"poetctl: warning: left out of the backup: {s}\n")


def _nats_backup(cfg: Any, dest: Path, base: dict[str, Any] | None) -> dict[str, Any]:
    from .. import __version__
    from ..backends.nats.backup import write_backup
    from .mode import nats_transport

    t = nats_transport(cfg)
    try:
        return write_backup(t, dest, max_bytes=cfg.max_event_bytes, version=__version__, since=base)
    finally:
        t.close()


def restore_cmd(
    src: Annotated[list[Path], typer.Argument(metavar="SRC...", help="A full backup, then its incrementals.")],
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TIME", help="Only events with timestamp <= TIME (RFC 3339 or 2h, 3d...)."),
    ] = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Restore archives into a new, empty spool (--spool NEW), verifying every checksum first.

    A member whose checksum differs from the manifest (or that the manifest
    does not list) refuses the whole restore, naming the file (exit 65);
    nothing is written then. With --until only events stamped at or before
    TIME are restored (point-in-time recovery) and state/ is left out
    (rebuild it from the events). The index is rebuilt. Dead letters get
    their archived error back (an older archive's: "restored from a
    backup"). Exit 2 if the target spool is not empty, 75 if a daemon is
    attached to it, 66 a missing archive. With --mode nats: into the NATS
    server of [nats] / POET_NATS_URL, whose stream must be empty (set up if
    missing); exit 75 while a daemon is attached (a live partition lease or
    membership entry, or a consumer with pulls waiting): the consumers are
    made again.
    """
    _restore(src, until, spool, config, mode)


@errors_to_exit
def _restore(
    src: list[Path], until: str | None, spool: Path | None, config: Path | None, mode: str | None = None
) -> None:
    from ..backends.fs.backup import Archives, restore_into
    from ..backends.fs.layout import SpoolLayout
    from ..errors import UsageError
    from ..timeparse import parse_time
    from .mode import resolve_mode

    cfg = load(spool, config)
    if mode == "nats" and spool is not None:
        raise UsageError("--spool and --mode nats exclude each other: restore into a spool, or into NATS")
    nats = spool is None and resolve_mode(mode, cfg) == "nats"  # --spool NEW always means a spool
    if spool is None and not nats:
        raise UsageError("restore needs --spool NEW: the new, empty spool to restore into (or --mode nats)")
    t = parse_time(until, option="--until") if until is not None else None
    archives = Archives(src)  # every checksum of every archive, before anything is written
    if nats:
        from ..backends.nats.restore import restore
        from ..errors import BackendUnavailable
        from .mode import nats_transport

        try:
            nt = nats_transport(cfg)
        except BackendUnavailable as exc:
            if "nats setup" not in exc.message:
                raise
            nt = nats_transport(cfg, setup=True)  # a fresh server: the streams and buckets are made first
        try:
            counts = restore(nt, archives, t)
        finally:
            nt.close()
    else:
        lease = float(cfg.daemon.get("lease_seconds", 30.0))
        counts = restore_into(SpoolLayout(cfg.spool), archives, t, lease=lease)
    sys.stdout.write(", ".join(f"{k}={v}" for k, v in sorted(counts.items())) + "\n")
    if counts.get("skipped_state_files") or counts.get("skipped_nats_state"):
        sys.stderr.write(
            "poetctl: note: the other backend's handler state (a spool's state/ and feedback/ files, or NATS's "
            "function-state KV entries) was not restored; the events were\n"
        )
