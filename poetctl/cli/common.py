"""Shared option types of the typer commands; the error boundary is :mod:`poetctl.cli.boundary`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .boundary import GLOBALS as GLOBALS
from .boundary import Globals as Globals
from .boundary import errors_to_exit as errors_to_exit
from .boundary import guarded as guarded
from .boundary import io_failure as io_failure
from .boundary import load as load

SpoolOpt = Annotated[
    Path | None,
    typer.Option(
        "--spool",
        help="Spool directory (else POET_SPOOL, poet.toml, ./.poet/pubsub).",
        show_default=False,
        # Not click's check: an unreadable spool is a permission error (77) named by the command, not a usage error.
        readable=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="poet.toml to use (else POET_CONFIG, ./poet.toml).", show_default=False),
]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="local_only, nats or hybrid: nats reads JetStream, the others the spool (default: POET_MODE, "
        "then delivery_mode).",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="table, json or jsonl (default: table on a TTY, jsonl in a pipe).", show_default=False
    ),
]
