"""The root callback: options given before the command, and --version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from .common import GLOBALS


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poetctl {__version__}")
        raise typer.Exit()


def root_callback(
    spool: Annotated[
        Path | None,
        typer.Option("--spool", help="Spool directory (else POET_SPOOL, poet.toml, ./.poet/pubsub).", readable=False),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="poet.toml to use (else POET_CONFIG).")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Event backbone for POET: emit, process and inspect ML-monitoring events.

    Exit codes: 0 ok, 1 nothing matched, 2 usage, 65 invalid data, 66 input
    missing, 69 backend unavailable, 74 I/O error, 75 try again later, 77
    permission denied, 78 bad configuration (status --check: 0 OK, 1 WARNING,
    2 CRITICAL, 3 UNKNOWN).
    """
    GLOBALS.spool = spool
    GLOBALS.config = config
