"""The ``poetctl`` command-line tool (typer).

Start-up matters for shell use, so nothing is imported or built that the
invoked command does not need: ``main`` looks at the command name and
registers only that command (its module imports its own heavy dependencies
inside the command body). ``--help``, completion and unknown commands get the
full app.
"""

from __future__ import annotations

import importlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import typer

# name -> (module, attribute, kind): "command" functions or "group" Typer apps, in --help order.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": (".admin", "init_cmd", "command"),
    "emit": (".emit", "emit_cmd", "command"),
    "validate": (".emit", "validate_cmd", "command"),
    "daemon": (".daemon", "daemon_cmd", "command"),
    "status": (".status", "status_cmd", "command"),
    "top": (".top", "top_cmd", "command"),
    "tail": (".tail", "tail_cmd", "command"),
    "correlate": (".correlate", "correlate_cmd", "command"),
    "replay": (".replay", "replay_cmd", "command"),
    "prune": (".prune", "prune_cmd", "command"),
    "fsck": (".fsck", "fsck_cmd", "command"),
    "backup": (".backup", "backup_cmd", "command"),
    "restore": (".backup", "restore_cmd", "command"),
    "dead": (".dead", "dead_app", "group"),
    "corrupt": (".corrupt", "corrupt_app", "group"),
    "state": (".state", "state_app", "group"),
    "schemas": (".admin", "schemas_app", "group"),
    "config": (".admin", "config_app", "group"),
    "integrations": (".integrations", "integrations_app", "group"),
    "mlflow": (".integrations", "mlflow_app", "group"),
    "serve": (".serve", "serve_cmd", "command"),
    "nats": (".nats", "nats_app", "group"),
    "forward": (".bridge", "forward_cmd", "command"),
    "bridge": (".bridge", "bridge_cmd", "command"),
}
_ROOT_OPTIONS_WITH_VALUE = ("--spool", "--config")


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app with every command, or with just ``only`` (what ``main`` runs)."""
    import typer

    from .root import root_callback

    app = typer.Typer(
        name="poetctl",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root_callback)
    for name, (module, attr, kind) in COMMANDS.items():
        if only is not None and name != only:
            continue
        obj = getattr(importlib.import_module(module, __package__), attr)
        if kind == "command":
            app.command(name)(obj)
        else:
            app.add_typer(obj, name=name)
    return app


def command_name(argv: list[str]) -> str | None:
    """The command ``argv`` invokes, skipping root options; None for --help, --version etc."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _ROOT_OPTIONS_WITH_VALUE:
            i += 2
        elif arg.startswith(tuple(o + "=" for o in _ROOT_OPTIONS_WITH_VALUE)):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg if arg in COMMANDS else None
    return None


def import_pathlib() -> None:
    """Import :mod:`pathlib` without importing :mod:`urllib.parse` with it (start-up).

    pathlib imports ``urllib.parse`` for one function, ``quote_from_bytes``,
    which only ``Path.as_uri`` calls. That module (its named tuples, and the
    ``ipaddress`` module it imports) costs ~11M instructions, a quarter of
    ``python -c pass``, and none of ``emit``/``status``/``tail``/``correlate``
    needs it. So pathlib is imported with a stand-in ``urllib.parse`` in
    ``sys.modules`` whose ``quote_from_bytes`` imports the real one at its
    first call; the stand-in is removed right after, so any later
    ``import urllib.parse`` gets the real module. Should pathlib ever want
    more from urllib.parse, the stand-in steps aside and pathlib is imported
    as usual.
    """
    if "pathlib" in sys.modules or "urllib.parse" in sys.modules:
        return
    stand_in = type(sys)("urllib.parse")

    def quote_from_bytes(*args: Any, **kwargs: Any) -> Any:
        from urllib.parse import quote_from_bytes as real

        return real(*args, **kwargs)

    stand_in.quote_from_bytes = quote_from_bytes  # type: ignore[attr-defined]
    sys.modules["urllib.parse"] = stand_in
    try:
        import pathlib
    except ImportError:
        pass  # the stand-in lacked something: imported as usual below
    finally:
        if sys.modules.get("urllib.parse") is stand_in:
            del sys.modules["urllib.parse"]
    import pathlib  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    import_pathlib()
    argv = sys.argv[1:]
    name = command_name(argv)
    if name in ("emit", "status", "tail", "correlate") and not os.environ.get("POETCTL_NO_FASTPATH"):
        from . import fastpath

        code = fastpath.run(argv) if name == "emit" else fastpath.run_reader(name, argv)
        if code is not None:
            sys.stdout.flush()
            raise SystemExit(code)
    build_app(name)(prog_name="poetctl")


def __getattr__(name: str) -> Any:
    # `poetctl.cli.app` (the full app) for tools that expect a module-level Typer object.
    if name == "app":
        return build_app()
    raise AttributeError(name)
