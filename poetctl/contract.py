"""The transport contract's two protocols: :class:`Consumer` (a daemon's side) and :class:`Transport`.

Their guarantees are stated here, method by method; the value classes they
exchange (:class:`~poetctl.transport.Outgoing`, :class:`~poetctl.transport.Delivery`,
...) and the module's overview are in :mod:`poetctl.transport`, which also
re-exports both protocols. They live apart because a Protocol needs
``typing`` at run time, and a one-event ``emit`` imports only the classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from .transport import Attempt, Delivery, Fetched, Outgoing, Query, State, Stored

# -- the contract -------------------------------------------------------------------------------


@runtime_checkable
class Consumer(Protocol):
    """One daemon's side of a backend. Every method is thread-safe (workers call
    :meth:`begin` and :meth:`done`, and outcomes are applied on worker threads).

    Per-key order: a key's events are leased in order, to one consumer at a
    time; while a lease of a key is failing (between :meth:`fail` and that
    delivery's ack, dead letter or release), no later event of the key is leased.
    """

    name: str

    def recover(self) -> int:
        """Put the leases of provably dead consumers back to pending, with their records; the count moved.

        Records survive: finished handlers stay finished, failures and
        deliveries keep counting (a death is an attempt: see :meth:`begin`).
        Idempotent; safe when several live consumers recover at once (each
        event moves once). The loop calls it at start; after that a live
        consumer's :meth:`fetch` takes a dead one's work over by itself, before
        leasing any later event of its keys (fs: at the next rescan or bucket
        takeover; NATS: after AckWait; memory: at the next fetch).
        fs: a dead owner's ``inflight/<owner>/`` back to pending under its owner
        lock, its journal turned into ``records/``. NATS: nothing to do - the
        server redelivers after AckWait; records live in a KV bucket.
        """
        ...

    def fetch(self, limit: int) -> Fetched:
        """Lease up to ``limit`` due events, in key order; never blocks.

        Due: its record's ``not_before`` has passed (injected clock) and no
        earlier event of its key waits (behind a retry, in pending, or leased by
        another consumer). Events of one key come in publish order (UUIDv7 and
        derived ids: id order, so a follow-up sorts at its cause's time).
        Unreadable input is quarantined on the way (counted, never returned) and
        never blocks what follows. Leases are made before return; many per call
        (the loop asks for hundreds): a backend may prepare the next batch ahead
        (fs: the mover child renames batch k+1 while batch k is handled).
        A dead consumer's work taken over on the way is counted in
        ``Fetched.recovered`` (the loop reports it to ``on_recover``).
        fs: window listing, read+verify, bucket flock, claim rename (pipelined
        through the mover). NATS: pull ``fetch(batch)`` on this daemon's
        partition consumers; redeliveries carry their record from KV.
        """
        ...

    def begin(self, delivery: Delivery) -> None:
        """Record that handlers are about to run for ``delivery``: ``record.deliveries += 1``.

        Durable against process death before return (not against power loss
        until :meth:`sync`), so a process that dies inside a handler has used
        an attempt: the next delivery sees it in :meth:`Record.died`.
        fs: one journal line (a single ``write``). NATS: implicit - the
        message's ``num_delivered``; nothing to write.
        """
        ...

    def done(self, delivery: Delivery, handler: str) -> None:
        """Record that ``handler`` finished for ``delivery`` (effectively-once: a redelivery skips it).

        Same durability as :meth:`begin`. The last handler needs no call: :meth:`ack` records it.
        fs: a ``D`` journal line. NATS: KV ``put(<id>.done.<handler>)``.
        """
        ...

    def ack(self, delivery: Delivery) -> None:
        """The event is processed: the lease ends, its record is dropped.

        Durable against process death on return; durable against power loss
        after :meth:`sync` (until then a power loss may redeliver it, whose
        finished handlers are skipped - never lost). A lease already lost
        (recovered by another consumer) makes this a no-op.
        fs: the mover's ``D <name>`` pipe write (or a rename into processed/).
        NATS: ``msg.ack()`` (``double_ack`` on sync), KV record purged.
        """
        ...

    def fail(self, delivery: Delivery, attempt: Attempt, not_before: float) -> None:
        """Record a failed attempt and when the next one is due; the lease is KEPT.

        Appends ``attempt`` to the record and sets ``not_before``, durable like
        :meth:`begin`. The caller retries the delivery itself at ``not_before``
        (:meth:`begin` again) or releases it; until then the key is blocked:
        no later event of it is leased, to this consumer or another.
        fs: an ``F`` journal line; the file stays in ``inflight/<owner>/``.
        NATS: KV put of the record and ``msg.in_progress()`` to keep the lease
        (a ``nak(delay)`` could be redelivered to another consumer, and the
        key's later events would overtake it).
        """
        ...

    def dead(self, delivery: Delivery, reason: str, info: dict[str, Any]) -> None:
        """Move the event to the dead letters with ``info`` (:func:`dead_letter_info`). Durable on return.

        The lease ends and the key is unblocked. fs: ``dead/<id>.error`` then
        the rename into ``dead/``, fsync. NATS: publish to the DLQ stream
        (``Nats-Msg-Id`` = id, so a repeat is deduplicated), then ``msg.term()``.
        """
        ...

    def quarantine(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Move a leased event to quarantine (kept, never deleted, never handled). Durable on return.

        For what :meth:`fetch` could read but the loop finds bad; input that
        cannot even be read is quarantined inside :meth:`fetch`. Publishing
        its id later raises :class:`Quarantined`. fs: ``corrupt/`` plus
        ``.reason``. NATS: publish to the corrupt stream, ``msg.term()``.
        """
        ...

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand leases back (shutdown): pending again with their records, in order; not an attempt.

        Durable on return. The next consumer skips finished handlers, keeps
        counting attempts and honours ``not_before``. fs: records saved, renames
        back to pending, fsync. NATS: ``nak(delay=not_before - now)``.
        """
        ...

    def sync(self) -> None:
        """Make every begin/done/ack/fail so far durable against power loss (a batched fsync)."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until new events may be due, :meth:`interrupt`, or ``timeout`` real seconds.

        A wake-up is a hint, never the truth: the loop fetches after it either
        way. fs: the watchdog event. NATS: a long-poll pull. memory: a condition.
        """
        ...

    def interrupt(self) -> None:
        """Wake a :meth:`wait` now (any thread; a signal handler may call it)."""
        ...

    def close(self) -> None:
        """Release every remaining lease (as :meth:`release`), sync, free resources. Idempotent."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A backend as the router and the commands see it. Thread-safe."""

    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        """Publish a group durably; per item, True if added, False if its id existed.

        * Durable before return: the group survives any crash once this returns.
        * Ids: an id that exists in any state is a no-op (False), also twice in
          one group (the first wins); an id in quarantine raises
          :class:`Quarantined` and nothing of the group is written.
        * Failure raises (:class:`~poetctl.errors.SpoolIOError`,
          :class:`~poetctl.errors.BackendUnavailable`). fs and memory: nothing
          of the group is visible. NATS: some items may be published; since
          publishing again with the same ids (``keyed=True``) is a no-op, the
          caller retries the whole group.
        * Concurrent callers may share one commit (the spool's group commit).
        fs: tmp files, fsync, rename/link into pending, one directory fsync.
        NATS: ``js.publish`` with ``Nats-Msg-Id`` = id (dedup window) to the
        subject of the event's partition, after a KV check for ids older than
        the window and for quarantined ids.
        """
        ...

    def consumer(self, name: str | None = None) -> Consumer:
        """A consumer for one daemon (``name``: a stable identity; default: this process)."""
        ...

    def state_of(self, event_id: str) -> State | None:
        """Where ``event_id`` is now, or None if unknown (also after prune). Checked in flow order,
        so an event moving forward concurrently is still found."""
        ...

    def get(self, event_id: str) -> Stored | None:
        """The event with its state (and dead letter or quarantine info), or None."""
        ...

    def select(self, query: Query, limit: int | None = None) -> Iterator[Stored]:
        """Events matching ``query`` in ``query.states``, newest first, at most ``limit``.

        Never fails on one damaged event (it is skipped). fs: listings and the
        index. NATS: stream ``get_msg``/ordered consumer by subject and start time.
        """
        ...

    def counts(self) -> dict[State, int]:
        """How many events per state (every :class:`State`; 0 when none)."""
        ...

    def prune(self, before: float, states: Sequence[State] = (State.PROCESSED,)) -> int:
        """Delete events of ``states`` whose timestamp is older than ``before``; how many.

        Dead events go only when named. Never touches pending or leased
        events, nor quarantined input (kept for an operator, never deleted):
        those states are refused with ValueError. Idempotent.
        NATS: stream ``max_age`` does it; this purges by subject and sequence.
        """
        ...

    def close(self) -> None:
        """Free resources (consumers are closed by their owners). Idempotent."""
        ...
