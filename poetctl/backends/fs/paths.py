"""The spool's runtime directories, spelled in one place.

Relative to the spool root, as :class:`~.safefs.SpoolDir` takes them
(``layout.root / HEARTBEATS`` gives the path). None is created by
``poetctl init``: the daemon makes them on start
(:meth:`~.layout.SpoolLayout.runtime_dirs` checks them for links).

* :data:`HEARTBEATS`: ``<owner>.json`` of every daemon, rewritten while it
  lives (``status`` shows them; recovery and ``fsck`` remove a dead owner's);
* :data:`OWNER_LOCKS`: ``<owner>.lock``, flocked by a daemon and inherited by
  its mover child, so recovery waits until both are gone;
* :data:`BUCKET_LOCKS`: ``<nnn>.lock``, one per key bucket, flocked by the
  daemon that holds the bucket's keys;
* :data:`OUTBOX`: the hybrid forwarder's state (:mod:`.outbox`); made by the
  first forwarder, so ``status`` skips the backlog (and that module) without it.
"""

from __future__ import annotations

HEARTBEATS = "run/daemons"
OWNER_LOCKS = "run/owners"
BUCKET_LOCKS = "run/buckets"
RUNTIME_DIRS = (HEARTBEATS, BUCKET_LOCKS, OWNER_LOCKS)
OUTBOX = "run/outbox"
