"""An in-memory backend: the whole transport contract in one process, like dramatiq's StubBroker.

For tests of handlers and of the daemon loop (:mod:`poetctl.testing` builds
a router and a daemon on it). Everything lives in dicts guarded by one lock;
"durable" means "recorded before return", which is all a process-local store
can promise. Events are kept as the bytes the router sealed and decoded
afresh for every delivery and query, so a handler that mutates its event
cannot change what is stored - as with a real backend.

Test hooks beyond the contract: :meth:`MemoryTransport.put_raw` (input that
fetch must quarantine, like a damaged file dropped into ``pending/``) and
:meth:`MemoryConsumer.crash` (the consumer's process died: its leases stay
until another consumer's :meth:`~MemoryConsumer.recover`).
"""

from .consumer import MemoryConsumer
from .entries import decode, sort_key
from .transport import MemoryTransport

__all__ = ["MemoryConsumer", "MemoryTransport", "decode", "sort_key"]
