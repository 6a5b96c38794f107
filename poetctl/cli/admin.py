"""``poetctl init``, ``poetctl schemas``, ``poetctl config``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

schemas_app = typer.Typer(help="List event types, print their schemas, check schema changes.", no_args_is_help=False)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


def init_cmd(spool: SpoolOpt = None, config: ConfigOpt = None) -> None:
    """Create the spool tree (idempotent; directories 0750). Prints the spool path."""
    _init(spool, config)


@errors_to_exit
def _init(spool: Path | None, config: Path | None) -> None:
    from ..backends.fs.layout import SpoolLayout

    cfg = load(spool, config)
    layout = SpoolLayout(cfg.spool)
    created = layout.init()
    sys.stderr.write(f"poetctl: spool at {layout.root} ({len(created)} directories created)\n")
    sys.stdout.write(str(layout.root.resolve()) + "\n")


@schemas_app.callback(invoke_without_command=True)
def schemas_list(ctx: typer.Context, output: OutputOpt = None, config: ConfigOpt = None) -> None:
    """List every event type with its topic and schema file."""
    if ctx.invoked_subcommand is None:
        _schemas_list(output, config)


@errors_to_exit
def _schemas_list(output: str | None, config: Path | None) -> None:
    from ..schemas import SchemaRegistry
    from ..topics import ROUTES, default_template
    from .output import emit_rows, resolve_format

    fmt = resolve_format(output)
    cfg = load(None, config)
    reg = SchemaRegistry(cfg.schema_paths)
    rows = []
    for t, path in reg.types().items():
        topic = ROUTES.get(t) or reg.topic_template(t) or default_template(t)
        rows.append(
            {
                "type": t,
                "topic": topic.replace("{fn}", "<function_name>"),
                "schema": str(path),
                "versions": list(reg.versions(t)),
                "builtin": reg.builtin in path.parents,  # <type>.json or <type>/<n>.json
            }
        )
    emit_rows(fmt, ["type", "topic", "schema"], rows, title="Event types")


@schemas_app.command("show")
def schemas_show(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="Event type, or 'envelope'.")],
    config: ConfigOpt = None,
) -> None:
    """Print the JSON Schema of TYPE (or of the envelope)."""
    _schemas_show(event_type, config)


@errors_to_exit
def _schemas_show(event_type: str, config: Path | None) -> None:
    from ..schemas import SchemaRegistry
    from .output import write_json

    reg = SchemaRegistry(load(None, config).schema_paths)
    if event_type == "envelope":
        import orjson

        write_json(orjson.loads((reg.builtin / "envelope.json").read_bytes()))
        return
    write_json(reg.schema(event_type))


@schemas_app.command("check-compat")
def schemas_check_compat(
    args: Annotated[
        list[str], typer.Argument(metavar="TYPE OLD NEW | OLD.json NEW.json", help="Two versions, or two files.")
    ],
    require: Annotated[
        str, typer.Option("--require", help="Mode to gate on: backward (default), forward, full or none.")
    ] = "backward",
    output: Annotated[str | None, typer.Option("--output", "-o", help="text (default) or json.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Say whether NEW is backward, forward, fully compatible with OLD, or breaking, with each reason.

    The modes are Confluent Schema Registry's: backward = readers of NEW accept
    every OLD payload; forward = readers of OLD accept every NEW payload; full =
    both. Exit 0 if the change satisfies --require, 1 if not (for CI), 2 usage,
    65 an invalid schema, 66 a missing file.

    Examples:

      poetctl schemas check-compat drift.detected 1 2

      poetctl schemas check-compat old.json new.json --require full
    """
    from .compat import check_compat

    check_compat(args, require, output, config)


@config_app.command("show")
def config_show(spool: SpoolOpt = None, config: ConfigOpt = None) -> None:
    """Print the effective configuration as JSON (secrets shown only as env:NAME)."""
    _config_show(spool, config)


@errors_to_exit
def _config_show(spool: Path | None, config: Path | None) -> None:
    from .output import write_json

    write_json(load(spool, config).redacted())
