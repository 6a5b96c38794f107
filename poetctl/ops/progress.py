"""A rich progress bar on stderr when stderr is a TTY; nothing otherwise (DESIGN.md §6)."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any


class Progress:
    """``with Progress("replay", total) as p: p.advance()``. A no-op unless enabled."""

    def __init__(self, description: str, total: float | None = None, enabled: bool | None = None) -> None:
        self.description = description
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            # NO_COLOR: no colour system, hence no styles at all (rich's no_color keeps bold).
            console = Console(stderr=True, color_system=None if os.environ.get("NO_COLOR") else "auto")
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def set_total(self, total: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
