"""The pending listing never hands out a key's later event while an earlier one may be unlisted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from poetctl.backends.fs import listing
from poetctl.backends.fs.listing import RACE_NS, list_window
from poetctl.ids import uuid7


def _names(n: int) -> list[str]:
    return [f"{uuid7()}.json" for _ in range(n)]


def _put(d: Path, names: list[str]) -> None:
    for n in names:
        (d / n).write_bytes(b"{}")


def _quiet(d: Path) -> None:
    """Set the directory's mtime well in the past: no modification can be racing a listing."""
    past = time.time_ns() - 10 * RACE_NS
    os.utime(d, ns=(past, past))


def test_a_quiet_directory_is_listed_once_in_order(tmp_path: Path) -> None:
    """No modification near the walk: one listing, every name confirmed, oldest first."""
    names = _names(50)
    _put(tmp_path, names[::-1])
    _quiet(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = list_window(tmp_path, fd, 1000)
    finally:
        os.close(fd)
    assert w.listings == 1 and w.unconfirmed == set()
    assert w.names == sorted(names) and w.count == 50


def test_a_name_committed_during_the_walk_is_unconfirmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file renamed in during the first walk is listed by the second and held back as unconfirmed."""
    first, late = _names(20), _names(1)
    _put(tmp_path, first)
    _quiet(tmp_path)
    real = listing._smallest
    calls = []

    def racing(pending: Path, window: int) -> tuple[list[str], int]:
        out = real(pending, window)
        if not calls:
            _put(tmp_path, late)  # committed while (just after) the first walk ran
        calls.append(1)
        return out

    monkeypatch.setattr(listing, "_smallest", racing)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = list_window(tmp_path, fd, 1000)
    finally:
        os.close(fd)
    assert w.listings == 2
    assert w.unconfirmed == set(late)
    assert w.names == sorted(first + late)


def test_a_recent_modification_takes_a_second_listing(tmp_path: Path) -> None:
    """A directory modified within the coarse-clock margin is listed twice (same tick as the walk)."""
    _put(tmp_path, _names(3))  # mtime is now
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = list_window(tmp_path, fd, 1000)
    finally:
        os.close(fd)
    assert w.listings == 2 and w.unconfirmed == set()


def test_missing_is_a_sorted_difference() -> None:
    """The merge walk finds exactly the keys of the later listing that the earlier lacks."""
    assert list(listing._missing(["a", "b", "c", "e"], ["b", "d", "e"])) == ["a", "c"]
    assert list(listing._missing([], ["a"])) == []
    assert list(listing._missing(["a"], [])) == ["a"]


@pytest.mark.parametrize("window", [1, 7, 199, 200, 201])
def test_a_window_smaller_than_the_backlog_is_its_oldest_names_in_order(tmp_path: Path, window: int) -> None:
    """With more pending than the window: exactly the window oldest names, sorted, other names by mtime after them."""
    import random

    names = _names(200)
    shuffled = names[:]
    random.Random(window).shuffle(shuffled)
    _put(tmp_path, shuffled)
    odd = tmp_path / "hand-made.json"  # not a UUIDv7 name: sorted by its mtime (now: after every uuid7 above)
    odd.write_bytes(b"{}")
    _quiet(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = list_window(tmp_path, fd, window)
    finally:
        os.close(fd)
    assert w.count == 201
    assert w.names == [*sorted(names), "hand-made.json"][:window]
