"""``poetctl nats setup``: create or update the JetStream streams, KV buckets and consumers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, errors_to_exit, load

nats_app = typer.Typer(help="NATS JetStream: set up streams and consumers.", no_args_is_help=True)


@nats_app.command("setup")
def setup_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the difference; change nothing.")] = False,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", help="Replicas of every stream and bucket: 1 or 3 (default [nats] replicas)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create or update stream POET (poet.p.>), POET_DEAD (poet.dead.>), POET_CORRUPT, the KV buckets and
    one durable pull consumer per partition and priority lane (poet-p<n>, poet-p<n>h, poet-p<n>l).
    Idempotent: run it again after changing [nats].

    Prints one line per object: '+' created, '~' updated (old -> new), '=' unchanged.
    With --dry-run nothing changes and the lines say what would. Exit 69 if NATS cannot be reached.
    """
    _setup(dry_run, replicas, config)


@errors_to_exit
def _setup(dry_run: bool, replicas: int | None, config: Path | None) -> None:
    import dataclasses

    from ..backends.nats.link import Link
    from ..backends.nats.settings import NatsSettings
    from ..backends.nats.setup import setup
    from ..errors import UsageError

    if replicas is not None and replicas not in (1, 3):
        raise UsageError(f"--replicas {replicas}: expected 1 or 3")
    settings = NatsSettings.from_config(load(None, config).nats)
    if replicas is not None:
        settings = dataclasses.replace(settings, replicas=replicas)
    link = Link(settings)
    try:
        changes = setup(link, settings, dry_run=dry_run)
    finally:
        link.close()
    head = "would change" if dry_run else "changed"
    n = sum(1 for c in changes if c.kind != "keep")
    sys.stdout.write(f"nats setup on {settings.shown_servers()}: {n} {head}\n")
    for c in changes:
        sys.stdout.write(c.line() + "\n")
