"""Index.newest pages: a small first batch (tail -n N) that doubles, without losing or repeating rows."""

from __future__ import annotations

from pathlib import Path

from poetctl.backends.fs.index import Index
from poetctl.spool import SpoolLayout


def test_newest_small_first_batch_doubles_and_returns_every_row_once(sp: Path) -> None:
    """With first=3 and batch=8, rows (many sharing a timestamp) come newest first, each once, as with one batch."""
    idx = Index(SpoolLayout(sp))
    try:
        rows = [(f"e{i:04d}", float(i // 4), "system.metrics", "m", "t", None, None, "processed") for i in range(70)]
        idx.put(rows)
        idx.put([("d0001", 99.0, "system.metrics", "m", "t", None, None, "dead")])
        whole = list(idx.newest(["processed"], batch=1000))
        paged = list(idx.newest(["processed"], batch=8, first=3))
        assert paged == whole and len(whole) == 70
        assert [r[0] for r in whole] == sorted((r[0] for r in rows), key=lambda i: (int(i[1:]) // 4, i), reverse=True)
        it = idx.newest(["processed"], since=5.0, first=2)
        assert [next(it)[0] for _ in range(3)] == ["e0069", "e0068", "e0067"]
    finally:
        idx.close()
