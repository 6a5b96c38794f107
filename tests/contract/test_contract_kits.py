"""The contract kit keeps NATS tests apart: nothing an earlier test left running reaches the next one."""

from __future__ import annotations

from pathlib import Path

from poetctl.backends.nats.consumer import NatsConsumer
from poetctl.backends.nats.subjects import partition_of
from poetctl.router import EventRouter
from poetctl.testing import FakeClock
from poetctl.transport import Outgoing

from .kits import KITS, START


def test_a_nats_consumer_left_running_is_stopped_before_the_next_test(tmp_path: Path) -> None:
    """A consumer an earlier test never closed is stopped when the next test's NATS backend is made."""
    kit = KITS["nats"]
    earlier = kit.make(FakeClock(START), tmp_path / "a")
    left = earlier.consumer()  # never closed: a test that forgets its Harness
    assert isinstance(left, NatsConsumer)
    t = kit.make(FakeClock(START), tmp_path / "b")
    try:
        # Left running, its keeper would announce it into this test's lease bucket every second: two members,
        # and the consumer below would hold 4 of the 8 partitions (its fetches seeing half the stream).
        assert not left._keeper.is_alive()
        router = EventRouter(transport=t)
        keys: dict[int, str] = {}
        for i in range(1000):
            keys.setdefault(partition_of(f"k{i}", 8), f"k{i}")
            if len(keys) == 8:
                break
        items = []
        for key in keys.values():
            ev, keyed = router.build("system.health", {"service": "svc", "status": "healthy"}, correlation_id=key)
            items.append(Outgoing(ev, ev.to_json() + b"\n", keyed))
        t.publish(items)
        c = t.consumer()
        assert isinstance(c, NatsConsumer)
        got = c.fetch(8).deliveries
        assert c.partitions() == list(range(8))
        assert len(got) == 8
    finally:
        t.close()
