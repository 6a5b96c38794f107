"""NATS JetStream backend (``delivery_mode = "nats"``).

Modules: :mod:`.settings` (``[nats]``, ``POET_NATS_URL``, secrets),
:mod:`.subjects` (topics <-> subjects, partitions), :mod:`.link` (the
connection on an asyncio thread), :mod:`.setup` (``poetctl nats setup``),
:mod:`.transport` (publish, queries), :mod:`.consumer` (partition leases,
fetch, outcomes), :mod:`.forwarder` (hybrid mode: the spool as an outbox),
:mod:`.bridge` (``poetctl bridge``). Nothing here imports ``nats`` at import time of this
package: the client library is loaded when a connection is made.
"""
