"""Function state and feedback records, stored beside the events.

* ``state/<fn>/current.json``: the function's current version and metadata.
* ``state/<fn>/history/<version>.json``: one file per version ever recorded.
* ``feedback/pending/<id>.json`` -> ``feedback/processed/<id>.json`` once the
  learning engine has incorporated it.

Every write is atomic and durable (tmp, fsync, rename, fsync dir). Function
names, versions and ids are checked against strict patterns before they
become path parts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .errors import InputMissing, SpoolIOError
from .ids import EVENT_ID_RE, FUNCTION_NAME_RE, VERSION_RE, check_path_part
from .spool.layout import DIR_MODE, SpoolLayout, fsync_dir
from .spool.writer import write_atomic

_JSON_OPTS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def _mkdir(path: Path) -> None:
    try:
        os.mkdir(path, DIR_MODE)
        fsync_dir(path.parent)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise SpoolIOError(f"{path} exists but is not a directory") from None


class StateStore:
    """Per-function state: ``current`` plus an append-only ``history`` by version."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout

    def _fn_dir(self, function_name: str) -> Path:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        return self.layout.state / function_name

    def current(self, function_name: str) -> dict[str, Any] | None:
        """The current state of ``function_name``, or None if it has none."""
        try:
            return orjson.loads((self._fn_dir(function_name) / "current.json").read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def history(self, function_name: str) -> list[dict[str, Any]]:
        """Every recorded version, oldest first (by ``updated_at``)."""
        d = self._fn_dir(function_name) / "history"
        out = []
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                try:
                    out.append(orjson.loads(Path(e.path).read_bytes()))
                except (OSError, orjson.JSONDecodeError):
                    continue
        out.sort(key=lambda r: (r.get("updated_at", 0), str(r.get("version"))))
        return out

    def functions(self) -> list[str]:
        try:
            return sorted(
                e.name
                for e in os.scandir(self.layout.state)
                if e.is_dir(follow_symlinks=False) and FUNCTION_NAME_RE.match(e.name)
            )
        except FileNotFoundError:
            return []

    def record_version(
        self,
        function_name: str,
        version: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        previous_version: str | None = None,
    ) -> dict[str, Any]:
        """Write ``history/<version>.json`` and make it ``current.json``; return the state.

        Idempotent per (function, version, event): writing the same event again
        rewrites identical content.
        """
        check_path_part("version", version, VERSION_RE)
        fn_dir = self._fn_dir(function_name)
        _mkdir(self.layout.state)
        _mkdir(fn_dir)
        _mkdir(fn_dir / "history")
        hist = fn_dir / "history" / f"{version}.json"
        updated_at = time.time()
        if hist.exists():
            try:
                updated_at = orjson.loads(hist.read_bytes()).get("updated_at", updated_at)
            except (OSError, orjson.JSONDecodeError):
                pass
        state = {
            "function_name": function_name,
            "version": version,
            "previous_version": previous_version,
            "updated_at": updated_at,
            "event_id": event_id,
            **data,
        }
        body = orjson.dumps(state, option=_JSON_OPTS)
        write_atomic(fn_dir / "history", f"{version}.json", body)
        write_atomic(fn_dir, "current.json", body)
        return state

    def require(self, function_name: str) -> dict[str, Any]:
        cur = self.current(function_name)
        if cur is None:
            raise InputMissing(f"no state for function {function_name!r} in {self.layout.state}")
        return cur


class FeedbackStore:
    """Feedback records waiting for (pending) or incorporated by (processed) the learning engine."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout

    def add(self, feedback_id: str, record: dict[str, Any]) -> bool:
        """Store a pending record; False (no-op) if that id is already pending or processed."""
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        name = f"{feedback_id}.json"
        if (self.layout.feedback_pending / name).exists() or (self.layout.feedback_processed / name).exists():
            return False
        write_atomic(self.layout.feedback_pending, name, orjson.dumps(record, option=_JSON_OPTS))
        return True

    def pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._iter(self.layout.feedback_pending)

    def processed(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._iter(self.layout.feedback_processed)

    def _iter(self, d: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            names = sorted(e.name for e in os.scandir(d) if e.name.endswith(".json") and not e.name.startswith("."))
        except FileNotFoundError:
            return
        for n in names:
            try:
                yield n[:-5], orjson.loads((d / n).read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue

    def mark_processed(self, feedback_id: str) -> bool:
        """Move a record from pending to processed; False if it was not pending."""
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        name = f"{feedback_id}.json"
        try:
            os.rename(self.layout.feedback_pending / name, self.layout.feedback_processed / name)
        except FileNotFoundError:
            return False
        fsync_dir(self.layout.feedback_processed)
        fsync_dir(self.layout.feedback_pending)
        return True
