"""Per-daemon statistics files for ``poetctl top``: ``run/stats/<host>.<pid>.json``.

A daemon with metrics (every ``poetctl daemon``) rewrites its file about once
a second: counters, handler-duration histograms and a short ring of totals,
so ``top`` can show rates and latency percentiles without talking to the
daemon. The files are ephemeral, so no fsync (a crash loses at most the last
second, and a dead daemon's file is told apart by its pid and age); each is
replaced atomically (new name with O_EXCL and no links followed, rename) in
a directory opened without following links.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from ...errors import SpoolIOError
from .layout import FILE_MODE, SpoolLayout
from .reader import CorruptEvent
from .safefs import SpoolDir, make_dir, open_dir

STATS = "run/stats"
MAX_BYTES = 4 * 1024 * 1024
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def stats_name(host: str, pid: int) -> str:
    """``<host>.<pid>.json`` with the host reduced to safe characters."""
    safe = "".join(c if c in _NAME_OK else "_" for c in host)[:64] or "host"
    return f"{safe}.{pid}.json"


class StatsWriter:
    """Writes one daemon's stats file; keeps the directory open between writes."""

    def __init__(self, root: Path, name: str) -> None:
        self.layout = SpoolLayout(root)
        self.name = name
        self._dir: SpoolDir | None = None

    def write(self, doc: dict[str, Any]) -> None:
        """Replace the file with ``doc`` (errors are raised as OSError/SpoolIOError for the caller to log)."""
        if self._dir is None:
            self._dir = make_dir(self.layout, STATS)
        d = self._dir
        tmp = f".{self.name}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=d.fd)
        try:
            try:
                os.write(fd, orjson.dumps(doc))
            finally:
                os.close(fd)
            os.rename(tmp, self.name, src_dir_fd=d.fd, dst_dir_fd=d.fd)
        except BaseException:
            d.unlink(tmp)
            raise

    def close(self) -> None:
        """Remove the file (the daemon stopped) and close the directory."""
        if self._dir is not None:
            try:
                self._dir.unlink(self.name)
            except OSError:
                pass
            self._dir.close()
            self._dir = None


def read_all(root: Path) -> list[dict[str, Any]]:
    """Every daemon's stats document (damaged or vanishing files are skipped)."""
    try:
        d = open_dir(SpoolLayout(root), STATS)
    except (OSError, SpoolIOError):
        return []
    if d is None:
        return []
    out = []
    with d:
        for name in sorted(d.names()):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            try:
                doc = orjson.loads(d.read(name, MAX_BYTES))
            except (OSError, SpoolIOError, CorruptEvent, orjson.JSONDecodeError):
                continue
            if isinstance(doc, dict):
                doc["file"] = name
                out.append(doc)
    return out


__all__ = ["STATS", "StatsWriter", "read_all", "stats_name"]
