"""``poetctl daemon --mode nats``: the generic loop over a NATS consumer (kept apart from the fs daemon)."""

from __future__ import annotations

import signal
from typing import Any


def run_nats(
    cfg: Any,
    handlers: list[str],
    workers: int | None,
    once: bool,
    builtin: bool = True,
    metrics_addr: str | None = None,
) -> int:
    """Consume this daemon's share of the partitions until SIGINT/SIGTERM (or, with ``once``, until idle).

    The built-in handlers run as on the spool, with their state (function
    state, feedback, learning) in JetStream KV (``router.stores``:
    :class:`~poetctl.backends.nats.storage.NatsStorage`), so every daemon
    on every machine shares it.
    """
    from ..configspec import defaults
    from ..daemon import log
    from ..daemon.loader import load_handlers
    from ..daemon.loop import Loop
    from ..daemon.retries import RetryPolicy
    from ..partition import key_function
    from ..router import EventRouter
    from .mode import nats_transport

    opts = {**defaults("daemon"), **cfg.daemon}
    transport = nats_transport(cfg, key_of=key_function(tuple(opts["partition_key"])))
    try:
        router = EventRouter(transport=transport, config=cfg)
        if builtin:
            from ..handlers import register_builtin

            register_builtin(router)
        load_handlers(router, [*cfg.handlers, *handlers])
        consumer = transport.consumer()
        from ..observability.wiring_nats import nats_observability

        obs = nats_observability(router, cfg, transport, consumer.name, metrics_addr=metrics_addr)
        loop = Loop(
            consumer,
            router.subscriptions,
            router,
            policy=RetryPolicy(opts["max_attempts"], opts["backoff_base"], opts["backoff_cap"]),
            workers=workers or opts["workers"],
            max_inflight=opts["max_inflight"],
            middleware=obs.middleware,
        )

        def stop(signum: int, frame: Any) -> None:
            loop.request_stop()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        log.info(
            f"daemon {consumer.name} on NATS {transport.settings.shown_servers()} "
            f"({transport.settings.partitions} partitions) with {len(router.subscriptions)} handler(s)"
            f"{' (once)' if once or opts['once'] else ''}",
            metrics=obs.url,
        )
        once = once or bool(opts["once"])
        try:
            code = loop.run(once=once)
        finally:
            obs.close()
        if not once:
            code = 0  # as on the spool: a daemon stopped by SIGINT/SIGTERM exits 0 (--once reports what happened)
        s = loop.stats
        log.info(f"daemon stopped: processed={s.processed} dead={s.dead} handed_back={s.handed_back}")
        return code
    finally:
        transport.close()


__all__ = ["run_nats"]
