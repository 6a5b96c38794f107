"""Upcasters: turn a stored event of an older schema version into the newest, so handlers see one shape.

Register one step per version change::

    router.upcast("drift.detected", 1, 2, lambda p: {**p, "unit": "score"})

An event of version v goes through the steps from v up to the type's newest
version. A step may skip versions (1 -> 3); a version k with no registered step
is crossed without change only when version k+1 is *backward compatible* with k
(every version-k payload is a valid k+1 payload: see :mod:`poetctl.schemacompat`).
Any other gap is a missing step, and :meth:`Upcasters.check` names it: the
daemon and ``tail --upcast`` call it (through ``load_handlers``) before handling
anything, so a missing step stops them at start, never at the first old event at 3 a.m.

Each step's result is validated against the version it produces; the event
handed on carries ``metadata.schema_version`` = the newest version and
``metadata.upcast_from`` = the version it was stored with. The stored event
is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidData
from .event import Event, check_type
from .schemafiles import check_version
from .schemas import SchemaRegistry

Upcaster = Callable[[dict[str, Any]], Mapping[str, Any]]


class UpcastError(InvalidData):
    """A step is missing or malformed, or an upcaster failed or produced an invalid payload (65)."""


@dataclass(frozen=True, slots=True)
class Step:
    event_type: str
    from_version: int
    to_version: int
    fn: Upcaster | None  # None: an identity step (the next version reads this one unchanged)


class Upcasters:
    """The registry of upcasting steps of one router, checked against its schema registry."""

    def __init__(self, schemas: SchemaRegistry) -> None:
        self.schemas = schemas
        self._steps: dict[str, dict[int, Step]] = {}
        self._plans: dict[tuple[str, int], tuple[Step, ...]] = {}
        self._newest: dict[str, int] = {}

    def register(self, event_type: str, from_version: int, to_version: int, fn: Upcaster) -> None:
        """Add the step ``from_version -> to_version`` of ``event_type``; raise :class:`UpcastError` if malformed.

        Both versions must exist as schemas, ``from_version < to_version``, and a
        version has at most one step out of it.
        """
        where = f"upcaster {event_type} {from_version}->{to_version}"
        try:
            check_type(event_type, where)
            check_version(from_version, where, "from_version")
            check_version(to_version, where, "to_version")
            known = self.schemas.versions(event_type)
        except InvalidData as exc:
            raise UpcastError(exc.message, where=where) from None
        if not callable(fn):
            raise UpcastError(f"expected a callable taking and returning a payload dict, got {fn!r}", where=where)
        if not known:
            raise UpcastError(f"unknown event type {event_type!r}: no schema to upcast between", where=where)
        if from_version >= to_version:
            raise UpcastError("to_version must be greater than from_version (upcasters only go forward)", where=where)
        for v in (from_version, to_version):
            if v not in known:
                raise UpcastError(
                    f"{event_type} has no schema version {v}; known versions: {', '.join(map(str, known))}",
                    where=where,
                )
        steps = self._steps.setdefault(event_type, {})
        if from_version in steps:
            prior = steps[from_version]
            raise UpcastError(
                f"{event_type} already has a step out of version {from_version} (to {prior.to_version})", where=where
            )
        steps[from_version] = Step(event_type, from_version, to_version, fn)
        self._plans.clear()

    # -- checking ------------------------------------------------------------------------
    def plan(self, event_type: str, version: int) -> tuple[Step, ...]:
        """The steps taking ``event_type`` from ``version`` to its newest; :class:`UpcastError` if one is missing."""
        key = (event_type, version)
        found = self._plans.get(key)
        if found is not None:
            return found
        known = self.schemas.versions(event_type)
        newest = next(reversed(known)) if known else version
        steps = self._steps.get(event_type, {})
        out: list[Step] = []
        v = version
        while v < newest:
            step = steps.get(v)
            if step is None:
                nxt = next((k for k in known if k > v), None)
                if v not in known or nxt is None or not self._reads_unchanged(event_type, v, nxt):
                    raise UpcastError(self._missing(event_type, v, nxt or newest, newest))
                step = Step(event_type, v, nxt, None)
            out.append(step)
            v = step.to_version
        self._plans[key] = plan = tuple(out)
        return plan

    def _reads_unchanged(self, event_type: str, old: int, new: int) -> bool:
        from .schemacompat import check

        return check(self.schemas.schema(event_type, old), self.schemas.schema(event_type, new)).satisfies("backward")

    @staticmethod
    def _missing(event_type: str, v: int, nxt: int, newest: int) -> str:
        return (
            f"no upcaster from version {v} of {event_type} (newest is {newest}) and version {nxt} cannot read "
            f"version {v} unchanged ('poetctl schemas check-compat {event_type} {v} {nxt}' says why); register "
            f"router.upcast({event_type!r}, {v}, {nxt}, fn)"
        )

    def check(self) -> None:
        """Raise :class:`UpcastError` naming every missing step, for every type with several versions."""
        problems = []
        types = set(self._steps) | {t for t in self.schemas.types() if len(self.schemas.versions(t)) > 1}
        for t in sorted(types):
            known = self.schemas.versions(t)
            self._newest[t] = next(reversed(known))
            for v in known:
                try:
                    self.plan(t, v)
                except UpcastError as exc:
                    problems.append(exc.message)
        if problems:
            raise UpcastError("; ".join(problems))

    # -- applying ------------------------------------------------------------------------
    def newest(self, event_type: str) -> int:
        n = self._newest.get(event_type)
        if n is None:
            known = self.schemas.versions(event_type)
            n = self._newest[event_type] = next(reversed(known)) if known else 0
        return n

    def apply(self, event: Event) -> Event:
        """``event`` at its type's newest version (itself when it already is, or is of a newer one)."""
        v = event.metadata.get("schema_version", 1)
        if type(v) is not int or v >= self.newest(event.type):
            return event
        payload: Any = copy.deepcopy(event.payload)
        where = f"event {event.id}"
        for step in self.plan(event.type, v):
            if step.fn is not None:
                try:
                    payload = step.fn(payload)
                except Exception as exc:
                    raise UpcastError(
                        f"upcaster {event.type} {step.from_version}->{step.to_version} failed: "
                        f"{type(exc).__name__}: {exc}",
                        where=where,
                    ) from exc
                if not isinstance(payload, Mapping):
                    raise UpcastError(
                        f"upcaster {event.type} {step.from_version}->{step.to_version} returned "
                        f"{type(payload).__name__}, expected a payload dict",
                        where=where,
                    )
                payload = dict(payload)
            try:
                self.schemas.validate_payload(event.type, payload, where, "$.payload", step.to_version)
            except InvalidData as exc:
                raise UpcastError(f"upcasting to version {step.to_version}: {exc.message}", where=where) from None
        meta = {**event.metadata, "schema_version": self.newest(event.type), "upcast_from": v}
        return event.replace(payload=payload, metadata=meta).seal()


def upcast_event(event: Event, registry: Upcasters | None) -> Event:
    """``event`` as handlers must see it: at the newest schema version of its type.

    The one place the daemon's key worker hands an event to handlers
    (:mod:`poetctl.daemon.handling`) calls this; so does ``tail --upcast``. Without a registry (no upcaster was ever
    registered) the event is returned as is.
    """
    if registry is None:
        return event
    return registry.apply(event)
