"""The processing daemon: claim, handle, retry, dead-letter, recover.

``Daemon`` and ``DaemonOptions`` live in :mod:`poetctl.daemon.core`; they are
imported on first use so that a light submodule (``retries``, ``log``: the
filesystem backend uses them) does not pull in the whole daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Daemon, DaemonOptions


def __getattr__(name: str) -> Any:
    if name in ("Daemon", "DaemonOptions"):
        from . import core

        return getattr(core, name)
    raise AttributeError(name)


__all__ = ["Daemon", "DaemonOptions"]
