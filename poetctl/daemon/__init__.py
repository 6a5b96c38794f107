"""The processing daemon: claim, handle, retry, dead-letter, recover."""

from .core import Daemon, DaemonOptions

__all__ = ["Daemon", "DaemonOptions"]
