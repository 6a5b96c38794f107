"""A base for small value classes written out instead of ``@dataclass``.

``import dataclasses`` (and inspect, ast, dis, tokenize with it) plus building
each class costs a one-event command more than its work (see
/work/notes/emitlean.md), so the classes on the path of ``poetctl emit``
(the transport contract's, :class:`~poetctl.subscriptions.Subscription`)
spell out their ``__init__`` and inherit the dataclass's ``__repr__`` and
``__eq__`` from here: a subclass lists its fields in ``_fields`` (the
constructor's order). Equality compares the fields of two objects of the same
class, as a dataclass's does; instances are unhashable unless the subclass
defines ``__hash__`` (frozen ones do, over the same fields).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (which a short command does not need)
if TYPE_CHECKING:
    from typing import Any, ClassVar


class ValueClass:
    """``__repr__`` and ``__eq__`` over ``_fields``, as ``@dataclass`` generates them."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value (as the dataclass was)

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, f) for f in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, ValueClass)
        return self._values() == other._values()

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # copy, deepcopy and pickle rebuild through the constructor (a frozen subclass refuses setattr).
        return (self.__class__, self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self.__class__.__qualname__}({inner})"


class FrozenError(AttributeError):
    """Assigning to a field of a frozen value (``dataclasses.FrozenInstanceError`` is an AttributeError too)."""
