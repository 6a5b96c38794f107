"""What handlers keep between events: the storage interface (issue 10).

Handlers get their stores from :attr:`poetctl.router.EventRouter.stores`, never
from the spool's files: the backend that carries the events keeps them too.

* :class:`FunctionState` - per function, the ``current`` state and the history
  of every version recorded (``poetctl state show``).
* :class:`FeedbackRecords` - feedback waiting for the learning engine
  (pending) or incorporated by it (processed).
* :class:`LearningState` - the learning engine's one document (detections,
  feedback, reported patterns, decisions), read and written under a lock.

Implementations: the filesystem spool (:mod:`poetctl.backends.fs.storage`:
``state/`` and ``feedback/`` beside the events, atomic durable writes, never
through a link) and memory (:mod:`poetctl.backends.memory.storage`: dicts, for
:class:`poetctl.testing.Harness`). Every method's docstring states its guarantee;
both implementations check names against the same patterns before using them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import InvalidData
from .strictjson import find_inexact, surely_exact

LEARNING_FILE = "learning.json"
LEARNING_SECTIONS = ("detections", "feedback", "reported", "decisions")
MAX_LEARNING_BYTES = 1 << 30


@runtime_checkable
class FunctionState(Protocol):
    """Per-function state: ``current`` plus an append-only history by version. Thread-safe."""

    def current(self, function_name: str) -> dict[str, Any] | None:
        """The current state of ``function_name``, or None if it has none.

        A stored state that is not a JSON object raises :class:`~poetctl.errors.InvalidData` (65).
        """
        ...

    def history(self, function_name: str) -> list[dict[str, Any]]:
        """Every recorded version, oldest first (by ``updated_at``; damaged records are left out)."""
        ...

    def functions(self) -> list[str]:
        """The functions with state, sorted."""
        ...

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
        """Record ``version`` in the history and make it current; return the state. Durable on return.

        Idempotent per (function, version, event): recording the same event
        again writes identical content (``updated_at`` is kept from the first
        record of that version). ``at`` is ``updated_at`` (the built-in handlers
        pass the event's timestamp, so state rebuilt from the events is the
        same; default: now). Names and versions that could not be a path
        part are refused (:class:`~poetctl.errors.InvalidData`).
        """
        ...

    def require(self, function_name: str) -> dict[str, Any]:
        """:meth:`current`, or :class:`~poetctl.errors.InputMissing` (66) when there is none."""
        ...


@runtime_checkable
class FeedbackRecords(Protocol):
    """Feedback waiting for (pending) or incorporated by (processed) the learning engine. Thread-safe."""

    def add(self, feedback_id: str, record: dict[str, Any]) -> bool:
        """Store a pending record, durable on return; False (a no-op) if the id is pending or processed already."""
        ...

    def pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(id, record)`` of every pending record, by id (unreadable ones skipped)."""
        ...

    def processed(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(id, record)`` of every processed record, by id (unreadable ones skipped)."""
        ...

    def mark_processed(self, feedback_id: str) -> bool:
        """Move a record from pending to processed, durable on return; False if it was not pending."""
        ...


@runtime_checkable
class LearningState(Protocol):
    """The learning engine's document. :meth:`load` and :meth:`save` only inside :meth:`locked`."""

    def locked(self) -> AbstractContextManager[None]:
        """Exclusive access across threads and across every process sharing the store (daemons)."""
        ...

    def load(self) -> dict[str, Any]:
        """A fresh copy of the document with every section of :data:`LEARNING_SECTIONS` present.

        A damaged stored document raises :class:`~poetctl.errors.InvalidData`
        (65) and is never replaced (see :func:`parse_learning`).
        """
        ...

    def save(self, data: dict[str, Any]) -> None:
        """Replace the document atomically; durable on return."""
        ...


@runtime_checkable
class Storage(Protocol):
    """The three stores of one backend."""

    @property
    def state(self) -> FunctionState:
        """Per-function state and history."""
        ...

    @property
    def feedback(self) -> FeedbackRecords:
        """Feedback records."""
        ...

    @property
    def learning(self) -> LearningState:
        """The learning engine's document."""
        ...


def parse_learning(data: bytes, where: str) -> dict[str, Any]:
    """``learning.json`` parsed strictly, or :class:`InvalidData` naming what is wrong (``poetctl fsck`` asks the same).

    Refused: not JSON, nested deeper than orjson reads (1,024) or writes back (255: so
    nothing deeper is ever used or saved), a duplicate key or an integer beyond 64 bits
    (:mod:`poetctl.strictjson`), not an object, or a section that is not an object.
    Not :func:`~poetctl.event.parse_json`: its depth walk in Python costs twice the parse
    on a state of thousands of detections, read for every learning event, while orjson
    bounds the depth already and nothing here walks the document recursively.
    """
    doc: Any = None
    try:
        doc = orjson.loads(data)
        problem = None if surely_exact(data, orjson.dumps(doc)) else find_inexact(data)
    except orjson.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc}"
    except orjson.JSONEncodeError:
        problem = "JSON nested deeper than 255 levels"
    if problem is None and not isinstance(doc, dict):
        problem = "not a JSON object"
    if problem is None:
        bad = [k for k in LEARNING_SECTIONS if not isinstance(doc.get(k, {}), dict)]
        problem = f"$.{bad[0]}: expected a JSON object" if bad else None
    if problem is not None:
        raise InvalidData(
            f"{problem}; the learning engine neither uses nor replaces it: fix it or move it aside", where=where
        )
    return doc  # type: ignore[no-any-return]


__all__ = [
    "LEARNING_FILE",
    "LEARNING_SECTIONS",
    "MAX_LEARNING_BYTES",
    "FeedbackRecords",
    "FunctionState",
    "LearningState",
    "Storage",
    "parse_learning",
]
