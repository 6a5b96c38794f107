"""``poetctl status``: counts per state, lag, dead/corrupt, daemon heartbeats, throughput; ``--check`` for Nagios."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..configspec import bounds
from .common import ConfigOpt, ModeOpt, OutputOpt, SpoolOpt
from .status_run import STATUS_DEFAULTS as STATUS_DEFAULTS
from .status_run import STATUS_KEYS as STATUS_KEYS
from .status_run import status


def status_cmd(
    check: Annotated[
        bool,
        typer.Option("--check", help="Nagios-style verdict: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (unreadable)."),
    ] = False,
    warn_lag: Annotated[
        str | None,
        typer.Option("--warn-lag", help="--check: WARNING when the oldest pending event is older than this [1m]."),
    ] = None,
    max_lag: Annotated[
        str | None,
        typer.Option("--max-lag", help="--check: CRITICAL when the oldest pending event is older than this [5m]."),
    ] = None,
    max_dead: Annotated[
        int | None,
        typer.Option(
            "--max-dead", **bounds("status", "max_dead"), help="--check: WARNING above this many dead letters [0]."
        ),
    ] = None,
    max_corrupt: Annotated[
        int | None,
        typer.Option(
            "--max-corrupt",
            **bounds("status", "max_corrupt"),
            help="--check: WARNING above this many quarantined files [0].",
        ),
    ] = None,
    max_stale: Annotated[
        int | None,
        typer.Option(
            "--max-stale",
            **bounds("status", "max_stale"),
            help="--check: WARNING above this many stale daemon heartbeats [0].",
        ),
    ] = None,
    min_daemons: Annotated[
        int | None,
        typer.Option(
            "--min-daemons",
            **bounds("status", "min_daemons"),
            help="--check: CRITICAL below this many live daemons (0: a daemon --once from cron is fine) [0].",
        ),
    ] = None,
    stale_after: Annotated[
        str | None,
        typer.Option(
            "--stale-after",
            help="A heartbeat older than this is stale (default: [daemon] lease_seconds, 30s).",
            show_default=False,
        ),
    ] = None,
    prometheus: Annotated[
        Path | None,
        typer.Option(
            "--prometheus",
            help="Write the figures as a node-exporter textfile (atomically replaced) and print nothing else.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    output: OutputOpt = None,
    mode: ModeOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show counts per state, lag (age of the oldest pending event), daemons and recent throughput.

    --check thresholds not given as options come from poet.toml's [status]
    table (warn_lag, max_lag, max_dead, max_corrupt, max_stale, min_daemons),
    else the defaults shown.

    --check prints one Nagios line (or the JSON document with a "check" key
    under --output json) and exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    (the spool is missing or cannot be read: permission denied, I/O error).
    Without --check: exit 66 no spool, 74 I/O error, 77 permission denied.

    With [limits] in poet.toml, "limits" shows how full the spool is against
    max_pending and max_pending_bytes, and the [limits.sources] patterns that
    refused an emit in the last minute (status only reads run/limits).

    With --mode nats (or POET_MODE / delivery_mode nats) the figures come from
    JetStream: the stream, each partition's consumer (pending, ack pending,
    redelivered, lag, owning daemon) and the daemons of the lease bucket;
    NATS unreachable is exit 69 (UNKNOWN, 3, with --check).

    Examples:

      poetctl status

      poetctl status --check --max-lag 10m --max-dead 5 --min-daemons 1

      poetctl status --prometheus /var/lib/prometheus/node-exporter/poetctl.prom
    """
    status(
        check,
        warn_lag,
        max_lag,
        max_dead,
        max_corrupt,
        max_stale,
        min_daemons,
        stale_after,
        prometheus,
        output,
        mode,
        spool,
        config,
    )
