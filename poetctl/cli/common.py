"""Shared option types and the error boundary every command runs inside."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..errors import PoetError
from .output import error

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

SpoolOpt = Annotated[
    Path | None,
    typer.Option("--spool", help="Spool directory (else POET_SPOOL, poet.toml, ./.poet/pubsub).", show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="poet.toml to use (else POET_CONFIG, ./poet.toml).", show_default=False),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="table, json or jsonl (default: table on a TTY, jsonl in a pipe).", show_default=False
    ),
]


class Globals:
    """Options given before the command (``poetctl --spool X emit ...``)."""

    spool: Path | None = None
    config: Path | None = None


GLOBALS = Globals()


def load(spool: Path | None = None, config: Path | None = None) -> Any:
    """The effective Config: command options win over global ones."""
    from ..config import load_config

    return load_config(config or GLOBALS.config, spool or GLOBALS.spool)


def errors_to_exit(fn: F) -> F:
    """Turn :class:`PoetError` into a one-line stderr message and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PoetError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): not an error for us.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def guarded(fn: Callable[[], T]) -> T:
    """Call ``fn`` inside the same error boundary as :func:`errors_to_exit`."""
    return errors_to_exit(fn)()
