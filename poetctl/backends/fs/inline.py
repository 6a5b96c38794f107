"""Inline dispatch on the spool: lease one named event right after it was published.

:class:`InlineFsConsumer` is an :class:`~.consumer.FsConsumer` (its own owner,
``inflight/<owner>/`` directory, journal and heartbeat) that never lists the
pending window: :meth:`InlineFsConsumer.lease` claims one given event by the
same rename into ``inflight/<owner>/`` under the same key-bucket flock as the
daemon's claims. So the lease is real: a daemon beside it cannot take the
event, and if this process dies while a handler runs, the event is in a dead
owner's directory and the next consumer's recovery puts it back (the journal's
``S`` line counts the death as an attempt).

Per-key order: the lease is refused (the event stays in ``pending/`` for the
consumers) when

* this consumer is still handling an event of the same key bucket, or another
  consumer holds the bucket (it has unfinished events of the bucket);
* an earlier event of the same key waits in ``pending/`` (earlier in the
  daemon's claim order, by name; published first, or waiting for a retry):
  found by reading the earlier pending files' keys, cached by name (an event
  file never changes), at most :data:`MAX_OTHERS` of them; a larger backlog
  refuses the lease (the consumers take the event in order).
"""

from __future__ import annotations

import os
import zlib
from typing import TYPE_CHECKING, Any

from ...event import Event
from ...transport import Delivery, Record
from .claims import BUCKETS, Handle
from .consumer import FsConsumer
from .reader import CorruptEvent, UnreadableEvent, decode_event, read_bytes

if TYPE_CHECKING:
    from .transport import FsTransport

MAX_OTHERS = 128  # other pending events whose keys are checked before an inline lease


class InlineFsConsumer(FsConsumer):
    """A consumer for inline dispatch: no watcher, no mover child; leases by name (:meth:`lease`)."""

    def __init__(self, transport: FsTransport, **options: Any) -> None:
        super().__init__(transport, watch=False, mover_backlog=-1, **options)
        self._keys: dict[str, str | None] = {}  # pending file name -> its key (None: not an event)

    def lease(self, event: Event) -> Delivery | None:
        """Claim ``event`` (just published, so in ``pending/``) if per-key order allows; else None.

        Not thread-safe against itself: the caller serialises leases.
        """
        name = f"{event.id}.json"
        key = self.key_of(event)
        if key in self.blocked or self._waits_behind(name, key):
            return None
        bucket = zlib.crc32(key.encode()) % BUCKETS
        with self.lock:
            if self.bucket_load[bucket]:
                return None  # this consumer is handling an event of the bucket (another thread's emit)
            if bucket not in self.bucket_fds and not self._hold_bucket(bucket):
                return None  # another consumer has unfinished events of the bucket
            self.bucket_load[bucket] += 1
            self.inflight += 1
        try:
            os.rename(name, name, src_dir_fd=self.pending_fd, dst_dir_fd=self.inflight_fd)
        except FileNotFoundError:  # taken by a consumer between publish and here
            self._unload(bucket, let_go=True)
            return None
        return Delivery(event, key, Record(), Handle(name, bucket, False))

    def _waits_behind(self, name: str, key: str) -> bool:
        """True if an earlier pending event has ``key`` (or too many to check); earlier: the daemon's order, by name."""
        others = [n for n in os.listdir(self.pending_fd) if n < name and n.endswith(".json") and n[0] != "."]
        if len(others) > MAX_OTHERS:
            return True
        if len(self._keys) > 4 * MAX_OTHERS:
            self._keys = {n: self._keys[n] for n in others if n in self._keys}
        for n in others:
            if n not in self._keys:
                self._keys[n] = self._key_of_file(n)
            if self._keys[n] == key:
                return True
        return False

    def _key_of_file(self, name: str) -> str | None:
        try:
            data = read_bytes(name, self.max_bytes, dir_fd=self.pending_fd)
            return self.key_of(decode_event(data, None, expected_id=name[:-5], validate_payload=False))
        except (FileNotFoundError, CorruptEvent, UnreadableEvent):
            return None  # gone, or not an event (a daemon quarantines it): it holds no key back

    def settle(self) -> None:
        """After an inline chain: sync, let go of idle buckets, keep the heartbeat and the index current."""
        self.sync()
        if self.indexer is not None:
            self.indexer.maybe_flush()
        if self.inflight == 0 and self.journal.lines:
            self.journal.truncate()
        if self.clock() >= self._next_beat:
            self._beat()
        with self.lock:
            self.release_idle_buckets()


__all__ = ["MAX_OTHERS", "InlineFsConsumer"]
