"""The hybrid forwarder publishes a key's events in emit order even while a daemon moves them mid-listing.

No NATS here: the forwarder publishes into a recording sink, and its step hook
(called after each directory of a round's listing) moves files the way a
daemon does at the worst moment, so each interleaving is forced, not hoped for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from poetctl import EventRouter
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.nats import forwarder as forwarder_mod
from poetctl.backends.nats.forwarder import Forwarder
from poetctl.transport import Outgoing

HEALTH = {"service": "svc", "status": "healthy"}


class Recorder:
    """A sink that keeps every published id in publish order."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        self.ids.extend(it.event.id for it in items)
        return [True] * len(items)

    def close(self) -> None:
        pass


def move(spool: Path, event_id: str, src: str, dst: str) -> None:
    (spool / dst).mkdir(parents=True, exist_ok=True)
    os.rename(spool / src / f"{event_id}.json", spool / dst / f"{event_id}.json")


def run_rounds(spool: Path, hook: Callable[[str], None], rounds: int = 3) -> list[str]:
    sink = Recorder()
    fw = Forwarder(SpoolLayout(spool), lambda: sink, step=hook, batch=1)
    try:
        for _ in range(rounds):
            fw.round()
    finally:
        fw.close()
    return sink.ids


def key_events(spool: Path, n: int = 3) -> list[str]:
    router = EventRouter(spool=spool)
    return [router.emit("system.health", {**HEALTH, "pid": i + 1}, correlation_id="k") for i in range(n)]


P, A, B = "events/pending", "events/inflight/owner-a", "events/inflight/owner-b"


@pytest.mark.parametrize(
    "moves",
    [
        # A daemon hands its claimed event back (release, or recovery of a dead owner) after
        # pending/ was listed and before its inflight directory was.
        {P: [(A, P)]},
        # Handed back, then claimed again by another daemon before pending/ could be looked at twice.
        {P: [(A, P)], "events/inflight": [(P, B)]},
        # Handed back and claimed again by the same owner, after its directory was listed.
        {P: [(A, P)], A: [(P, A)]},
        # A dead letter retried (dead/ -> pending/) after pending/ was listed.
        {P: [("events/dead", P)]},
    ],
    ids=["hand-back", "hand-back-then-other-owner", "hand-back-then-same-owner", "dead-retry"],
)
def test_a_key_is_published_in_emit_order_when_its_first_event_moves_mid_listing(
    spool: Path, moves: dict[str, list[tuple[str, str]]]
) -> None:
    """An earlier event of a key moved backwards during a listing is never published after a later one."""
    first, *rest = key_events(spool)
    start = next(src for steps in moves.values() for src, _ in steps)
    move(spool, first, P, start)  # where a daemon (or the dead letter box) holds it before the round
    pending = dict(moves)

    def hook(rel: str) -> None:
        for src, dst in pending.pop(rel, []):
            move(spool, first, src, dst)

    published = run_rounds(spool, hook)
    assert pending == {}, f"the listing never reached {sorted(pending)}"
    assert published == [first, *rest]


def test_an_event_that_vanishes_when_read_holds_back_the_rest_of_the_batch(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event listed but found nowhere when read (moving) stops the batch; later ones wait for the next pass."""
    ids = key_events(spool)
    real = forwarder_mod.read_committed
    missed: list[str] = []

    def flaky(layout: SpoolLayout, event_id: str, hint: str, max_bytes: int) -> bytes | None:
        if event_id == ids[0] and not missed:
            missed.append(event_id)  # in transit between two directories while it was looked for
            return None
        return real(layout, event_id, hint, max_bytes)

    monkeypatch.setattr(forwarder_mod, "read_committed", flaky)
    sink = Recorder()
    fw = Forwarder(SpoolLayout(spool), lambda: sink, batch=512)
    try:
        assert fw.round() == 3  # the first pass stops before it; the second finds it and sends all three
    finally:
        fw.close()
    assert missed == [ids[0]] and sink.ids == ids


def test_a_pruned_event_does_not_stop_forwarding(spool: Path) -> None:
    """An event deleted between the listing and the read is skipped by the next round, which forwards the rest."""
    ids = key_events(spool)

    def prune(rel: str) -> None:
        if rel == "events/dead" and (spool / P / f"{ids[0]}.json").exists():
            os.unlink(spool / P / f"{ids[0]}.json")

    assert run_rounds(spool, prune, rounds=1) == ids[1:]


def test_arrivals_names_each_file_created_or_moved_in_and_says_when_it_may_have_lost_one(tmp_path: Path) -> None:
    """The pending watch reports arrivals by name in order, and reports the loss of its directory as incomplete."""
    from poetctl.backends.fs.arrivals import Arrivals

    d = tmp_path / "watched"
    d.mkdir()
    (tmp_path / "outside.json").write_text("{}")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        watch = Arrivals(fd)
    finally:
        os.close(fd)
    try:
        (d / "a.json").write_text("{}")
        os.rename(tmp_path / "outside.json", d / "b.json")
        os.rename(d / "a.json", tmp_path / "a.json")  # leaving is not an arrival
        assert watch.take() == ["a.json", "b.json"] and watch.complete
        os.rename(d, tmp_path / "moved")
        assert watch.take() == [] and not watch.complete
    finally:
        watch.close()
