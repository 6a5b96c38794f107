"""The result of ``poetctl fsck``: one :class:`Problem` per finding, gathered in a :class:`FsckReport`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Problem:
    kind: str
    path: str
    detail: str
    repaired: bool = False
    action: str | None = None


@dataclass(slots=True)
class FsckReport:
    spool: str
    repair: bool
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unrepaired(self) -> int:
        return sum(1 for p in self.problems if not p.repaired)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "spool": self.spool,
            "repair": self.repair,
            "clean": self.unrepaired == 0,
            "checked": self.checked,
            "summary": self.summary(),
            "problems": [asdict(p) for p in self.problems],
            "repaired": sum(1 for p in self.problems if p.repaired),
            "unrepaired": self.unrepaired,
            "seconds": round(self.seconds, 3),
        }
