"""``poetctl daemon``: the generic loop (:mod:`.loop`) on the filesystem spool's consumer, with options.

:class:`Daemon` builds an :class:`~poetctl.backends.fs.consumer.FsConsumer`
from :class:`DaemonOptions` (the ``[daemon]`` table of poet.toml), the
reporting middleware (log lines, ``system.health``; :mod:`.reporting`) and a
:class:`~.loop.Loop`; ``run()`` is ``Loop.run``. Everything that touches spool
files is in :mod:`poetctl.backends.fs`; this module only wires it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends.fs.claims import BUCKETS
from ..backends.fs.consumer import FsConsumer
from ..backends.fs.owner import process_start_ticks
from ..backends.fs.transport import FsTransport
from ..config import DEFAULT_MAX_CAUSATION_DEPTH
from ..partition import DEFAULT_PARTITION_KEY, key_function, partition_key
from ..priority import DEFAULT_SHARES
from ..router import EventRouter
from ..topics import check_subscription
from .loop import Loop
from .middleware import Middleware, Stats
from .reporting import HealthReporter, LogOutcomes
from .retries import RetryPolicy

CLAIM_BATCH = 256  # events leased per fetch (one mover claim batch)


@dataclass(slots=True)
class DaemonOptions:
    """Tunables; every one has a ``[daemon]`` key in poet.toml of the same name."""

    workers: int = 4
    once: bool = False
    rescan_interval: float = 5.0
    heartbeat_interval: float = 2.0
    health_interval: float = 60.0
    lease_seconds: float = 30.0
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    window: int = 100_000
    max_inflight: int = 4096
    partition_key: tuple[str, ...] = DEFAULT_PARTITION_KEY
    watch: bool = True
    index: bool = True
    # Start the completion mover (see mover.py) once a listing finds this many pending
    # events; 0 starts it with the daemon, a negative value never does.
    mover_backlog: int = 1024
    # Deepest follow-up chain a handler may extend (enforced by EventRouter.build).
    max_causation_depth: int = DEFAULT_MAX_CAUSATION_DEPTH
    # Shares of a fetch per priority class while several wait (poetctl/priority.py).
    priority_shares: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SHARES))

    @classmethod
    def from_config(cls, table: dict[str, Any], **overrides: Any) -> DaemonOptions:
        """Build from poet.toml's ``[daemon]`` table plus command-line ``overrides`` (None: not given).

        The table is checked against :mod:`poetctl.configspec` (``load_config``
        has already done so for a file); a bad or unknown key raises
        :class:`~poetctl.errors.ConfigError` naming it and its allowed range.
        Keys of the table that are not options of this class (read by others)
        are checked but not stored.
        """
        from ..configspec import check_section

        given = {k: v for k, v in overrides.items() if v is not None}
        checked = check_section("daemon", {**table, **given}, "daemon options")
        opts = cls()
        for k, v in checked.items():
            if k in cls.__dataclass_fields__:
                setattr(opts, k, tuple(v) if k == "partition_key" else v)
        return opts


class Daemon:
    """Processes one spool until stopped. ``run()`` returns the process exit code.

    ``clock`` is read for every time the daemon decides on (retries, expiry,
    rescans, heartbeats, ownership leases); ``middleware`` runs after the
    built-in counters (:attr:`stats`) and log lines.
    """

    def __init__(
        self,
        router: EventRouter,
        options: DaemonOptions | None = None,
        clock: Callable[[], float] = time.time,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        transport = router.transport
        if not isinstance(transport, FsTransport):
            raise TypeError(
                f"Daemon runs on the filesystem spool, not on {type(transport).__name__} (use daemon.loop.Loop)"
            )
        self.router = router
        self.opts = opts = options or DaemonOptions()
        router.max_causation_depth = opts.max_causation_depth
        self.clock = clock
        self.layout = transport.layout
        self.policy = RetryPolicy(opts.max_attempts, opts.backoff_base, opts.backoff_cap)
        for sub in router.subscriptions:  # also those not added through subscribe()
            check_subscription(sub.pattern, sub.name)
        # The router's own transport: a follow-up it publishes wakes this consumer (--once sees it before it
        # decides that nothing is left), and the daemon's follow-ups share the router's group commit.
        self.transport = transport
        self.consumer: FsConsumer = transport.consumer(
            clock=clock,
            registry=router.registry,
            validate=router.config.validation,
            key_of=key_function(opts.partition_key),
            window=opts.window,
            rescan_interval=opts.rescan_interval,
            heartbeat_interval=opts.heartbeat_interval,
            lease_seconds=opts.lease_seconds,
            watch=opts.watch and not opts.once,
            index=opts.index,
            mover_backlog=opts.mover_backlog,
            status=self._status,
            priority_shares=opts.priority_shares,
        )
        self.owner = self.consumer.owner
        extra: list[Middleware] = [LogOutcomes(opts.max_attempts)]
        if not opts.once:
            extra.append(
                HealthReporter(
                    router.emit,
                    f"poetctl.daemon/{self.owner}",
                    opts.health_interval,
                    clock,
                    self.status,
                    lambda: self.loop.error is None,
                )
            )
        self.loop = Loop(
            self.consumer,
            router.subscriptions,
            router,
            policy=self.policy,
            workers=opts.workers,
            clock=clock,
            middleware=[*extra, *middleware],
            fetch_limit=CLAIM_BATCH,
            max_inflight=opts.max_inflight,
        )
        self.stats: Stats = self.loop.stats
        self.stopping = False

    @property
    def counters(self) -> Stats:
        """The status counters (``processed``, ``dead``, ... as in the heartbeat's ``counts``)."""
        return self.stats

    def run(self) -> int:
        """Run until signalled (or, with ``once``, until nothing is due). Returns the exit code."""
        code = self.loop.run(once=self.opts.once)
        return code if self.opts.once else 0  # 1 and 75 describe a --once run; a stopped daemon ends well

    def step(self) -> int:
        """One round of the loop (see :meth:`Loop.step`)."""
        return self.loop.step()

    def request_stop(self, signum: int | None = None, frame: Any = None) -> None:
        """Signal handler: the first call asks for a graceful stop, the second for an immediate one.

        Python runs this on the main thread between bytecodes. The first call
        only sets flags. The second exits on the spot: the main thread may be
        inside a slow handler (inline mode), and "at once" must not wait for
        it; whatever was claimed stays in inflight/ and the next daemon recovers it.
        """
        if self.stopping:
            os._exit(130)
        self.stopping = True
        self.loop.request_stop()

    def _status(self) -> dict[str, Any]:
        """The daemon's part of the heartbeat (the consumer adds owner, lag, in-flight)."""
        stats = getattr(self, "stats", None)  # None while the consumer is built (its first beat)
        return {
            "started_at": stats.started if stats is not None else self.clock(),
            "workers": self.opts.workers,
            "handlers": sorted({s.name for s in self.router.subscriptions}),
            "counts": stats.counts() if stats is not None else Stats().counts(),
            "once": self.opts.once,
        }

    def status(self) -> dict[str, Any]:
        """The heartbeat document."""
        return self.consumer.heartbeat()


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGINT/SIGTERM: first graceful, second immediate. The handler only sets flags."""
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGTERM, daemon.request_stop)


__all__ = [
    "BUCKETS",
    "Daemon",
    "DaemonOptions",
    "install_signal_handlers",
    "key_function",
    "partition_key",
    "process_start_ticks",
]
