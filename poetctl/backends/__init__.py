"""Backends behind the transport contract (:mod:`poetctl.transport`).

* :mod:`poetctl.backends.memory` - in-process, for tests of handlers and of the daemon loop;
* ``poetctl.backends.fs`` - the filesystem spool (moves here from ``poetctl.spool`` / ``poetctl.daemon``);
* ``poetctl.backends.nats`` - NATS JetStream (a later issue).

Nothing here is imported by :mod:`poetctl` on start-up: pick a backend explicitly.
"""
