"""The handlers' stores (:mod:`poetctl.storage`) in memory: for :class:`poetctl.testing.Harness`.

Same names, same checks, same orders and same idempotence as the spool's
stores (:mod:`poetctl.backends.fs.storage`); "durable" means "recorded before
return". Records are copied in and out (a JSON round trip), so a handler that
mutates what it read or wrote cannot change what is stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import orjson

from ...errors import InputMissing, InvalidData
from ...ids import EVENT_ID_RE, FUNCTION_NAME_RE, VERSION_RE, check_path_part
from ...storage import LEARNING_SECTIONS


def _copy(value: Any) -> Any:
    """A deep copy with JSON's types (what a stored file gives back)."""
    return orjson.loads(orjson.dumps(value))


def _updated_at(record: dict[str, Any]) -> float | None:
    t = record.get("updated_at")
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


class MemoryFunctionState:
    """:class:`poetctl.storage.FunctionState` in dicts; ``clock`` stamps ``updated_at``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._current: dict[str, dict[str, Any]] = {}
        self._history: dict[str, dict[str, dict[str, Any]]] = {}

    def current(self, function_name: str) -> dict[str, Any] | None:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        with self._lock:
            cur = self._current.get(function_name)
            return None if cur is None else _copy(cur)

    def history(self, function_name: str) -> list[dict[str, Any]]:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        with self._lock:
            out = [_copy(r) for r in self._history.get(function_name, {}).values()]
        out.sort(key=lambda r: (_updated_at(r) is None, _updated_at(r) or 0.0, str(r.get("version"))))
        return out

    def functions(self) -> list[str]:
        with self._lock:
            return sorted(self._history)

    def record_version(
        self,
        function_name: str,
        version: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        previous_version: str | None = None,
        at: float | None = None,
    ) -> dict[str, Any]:
        check_path_part("function name", function_name, FUNCTION_NAME_RE)
        check_path_part("version", version, VERSION_RE)
        with self._lock:
            versions = self._history.setdefault(function_name, {})
            prev = versions.get(version)
            state = {
                "function_name": function_name,
                "version": version,
                "previous_version": previous_version,
                "updated_at": prev["updated_at"]
                if prev is not None and "updated_at" in prev
                else (self.clock() if at is None else at),
                "event_id": event_id,
                **data,
            }
            stored = _copy(state)
            versions[version] = stored
            self._current[function_name] = _copy(stored)
            return _copy(stored)  # type: ignore[no-any-return]

    def require(self, function_name: str) -> dict[str, Any]:
        cur = self.current(function_name)
        if cur is None:
            raise InputMissing(f"no state for function {function_name!r}")
        return cur


class MemoryFeedbackRecords:
    """:class:`poetctl.storage.FeedbackRecords` in dicts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._processed: dict[str, dict[str, Any]] = {}

    def add(self, feedback_id: str, record: dict[str, Any]) -> bool:
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        data = _copy(record)
        with self._lock:
            if feedback_id in self._pending or feedback_id in self._processed:
                return False
            self._pending[feedback_id] = data
            return True

    def pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            items = sorted(self._pending.items())
        return iter([(k, _copy(v)) for k, v in items])

    def processed(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            items = sorted(self._processed.items())
        return iter([(k, _copy(v)) for k, v in items])

    def mark_processed(self, feedback_id: str) -> bool:
        check_path_part("feedback id", feedback_id, EVENT_ID_RE)
        with self._lock:
            rec = self._pending.pop(feedback_id, None)
            if rec is None:
                return False
            self._processed[feedback_id] = rec
            return True


class MemoryLearningState:
    """:class:`poetctl.storage.LearningState` in memory (one process: a thread lock is the whole lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doc = orjson.dumps({})

    def locked(self) -> AbstractContextManager[None]:
        return _Held(self._lock)

    def load(self) -> dict[str, Any]:
        data = orjson.loads(self._doc)
        if not isinstance(data, dict):  # pragma: no cover - only save() writes it
            raise InvalidData("learning state: not a JSON object")
        for k in LEARNING_SECTIONS:
            data.setdefault(k, {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        self._doc = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


class _Held:
    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class MemoryStorage:
    """The three stores (:class:`poetctl.storage.Storage`) in memory; ``clock`` stamps function state."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.state = MemoryFunctionState(clock)
        self.feedback = MemoryFeedbackRecords()
        self.learning = MemoryLearningState()


__all__ = ["MemoryFeedbackRecords", "MemoryFunctionState", "MemoryLearningState", "MemoryStorage"]
