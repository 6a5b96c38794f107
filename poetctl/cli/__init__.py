"""The ``poetctl`` command-line tool (typer).

Command modules import their heavy dependencies (rich, jsonschema, watchdog)
inside the command bodies, so ``poetctl emit`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from .admin import config_app, init_cmd, schemas_app
from .common import GLOBALS
from .correlate import correlate_cmd
from .daemon import daemon_cmd
from .dead import dead_app
from .emit import emit_cmd, validate_cmd
from .fsck import fsck_cmd
from .prune import prune_cmd
from .replay import replay_cmd
from .state import state_app
from .status import status_cmd
from .tail import tail_cmd

app = typer.Typer(
    name="poetctl",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poetctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    spool: Annotated[
        Path | None, typer.Option("--spool", help="Spool directory (else POET_SPOOL, poet.toml, ./.poet/pubsub).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="poet.toml to use (else POET_CONFIG).")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Event backbone for POET: emit, process and inspect ML-monitoring events.

    Exit codes: 0 ok, 1 nothing matched, 2 usage, 65 invalid data, 66 input
    missing, 69 backend unavailable, 74 I/O error, 75 try again later.
    """
    GLOBALS.spool = spool
    GLOBALS.config = config


app.command("init")(init_cmd)
app.command("emit")(emit_cmd)
app.command("validate")(validate_cmd)
app.command("daemon")(daemon_cmd)
app.command("status")(status_cmd)
app.command("replay")(replay_cmd)
app.command("prune")(prune_cmd)
app.command("fsck")(fsck_cmd)
app.command("tail")(tail_cmd)
app.command("correlate")(correlate_cmd)
app.add_typer(schemas_app, name="schemas")
app.add_typer(config_app, name="config")
app.add_typer(state_app, name="state")
app.add_typer(dead_app, name="dead")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="poetctl")
