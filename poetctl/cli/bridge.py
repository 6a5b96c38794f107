"""``poetctl forward`` (hybrid mode's outbox forwarder, in the foreground) and ``poetctl bridge``."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import ConfigOpt, SpoolOpt, errors_to_exit, load

NatsUrlOpt = Annotated[
    str | None,
    typer.Option("--nats-url", help="NATS server URL(s), comma-separated (else POET_NATS_URL).", show_default=False),
]


def forward_cmd(
    once: Annotated[
        bool, typer.Option("--once", help="Forward the backlog, then exit (75 if NATS could not take all of it).")
    ] = False,
    stream: Annotated[str, typer.Option("--stream", help="JetStream stream of the events.")] = "POET",
    nats_url: NatsUrlOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Forward every committed spool event to JetStream once (hybrid mode's outbox).

    Each event is published with Nats-Msg-Id = its id and recorded as
    forwarded (run/outbox/) after its PubAck. While NATS is unreachable the
    backlog waits in the spool and forwarding retries with backoff; emit is
    never affected. SIGINT/SIGTERM stop after the current batch (exit 0).
    One forwarder per spool: a second one exits 75.
    """
    raise typer.Exit(_forward(once, stream, nats_url, spool, config))


@errors_to_exit
def _forward(once: bool, stream: str, nats_url: str | None, spool: Path | None, config: Path | None) -> int:
    from ..backends.fs.layout import SpoolLayout
    from ..backends.nats._link import Link, servers_from
    from ..backends.nats.forwarder import Forwarder

    cfg = load(spool, config)
    layout = SpoolLayout(cfg.spool).require()
    fw = Forwarder(layout, Link(servers_from(nats_url), name="poetctl-forward"), stream=stream)

    async def main() -> int:
        if once:
            try:
                await fw.round(compact=True)
                return 0
            except Exception as exc:  # NATS down or slow: the backlog stays, try again later
                from ..cli.output import error

                error(f"forward: {type(exc).__name__}: {exc}; {fw.stats.backlog.count} event(s) wait in the spool")
                return 75
            finally:
                await fw.close()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await fw.run(stop)
        return 0

    return asyncio.run(main())


def bridge_cmd(
    inbound_prefix: Annotated[
        str, typer.Option("--inbound-prefix", help="Prefix of the external inbound subjects (dot-separated).")
    ] = "",
    outbound_prefix: Annotated[
        str, typer.Option("--outbound-prefix", help="Prefix of the external subjects POET events go to.")
    ] = "aitomatic",
    inbound: Annotated[
        list[str] | None,
        typer.Option(
            "--inbound",
            help="SUBJECT=MAPPING (transpilation, pagerduty, mlflow); repeatable; replaces the seed's three.",
        ),
    ] = None,
    outbound_types: Annotated[
        list[str] | None,
        typer.Option("--outbound-type", help="Event type pattern to send out (fnmatch); repeatable [*]."),
    ] = None,
    no_inbound: Annotated[bool, typer.Option("--no-inbound", help="Only send POET events out.")] = False,
    no_outbound: Annotated[bool, typer.Option("--no-outbound", help="Only bring external events in.")] = False,
    stream: Annotated[str, typer.Option("--stream", help="JetStream stream of the events.")] = "POET",
    durable: Annotated[
        str, typer.Option("--durable", help="Durable consumer name of the outbound side.")
    ] = "poet-bridge",
    nats_url: NatsUrlOpt = None,
    spool: SpoolOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Bridge POET and external NATS subjects both ways (the seed's AitomaticEventIntegration).

    Inbound: transpilation.completed, external.pagerduty.resolved and
    external.mlflow.experiment_tagged become transpilation.completed,
    feedback.alert_resolved and feedback.mlflow_validation events. Outbound:
    POET events from the event stream go to <outbound-prefix>.<type>. A
    Poet-Origin header and metadata.origin=bridge keep anything from bouncing
    back. Runs until SIGINT/SIGTERM (exit 0); 78 for a bad prefix or mapping.
    """
    raise typer.Exit(
        _bridge(
            inbound_prefix,
            outbound_prefix,
            inbound,
            outbound_types,
            no_inbound,
            no_outbound,
            stream,
            durable,
            nats_url,
            spool,
            config,
        )
    )


@errors_to_exit
def _bridge(
    inbound_prefix: str,
    outbound_prefix: str,
    inbound: list[str] | None,
    outbound_types: list[str] | None,
    no_inbound: bool,
    no_outbound: bool,
    stream: str,
    durable: str,
    nats_url: str | None,
    spool: Path | None,
    config: Path | None,
) -> int:
    from ..backends.nats._link import Link, servers_from
    from ..backends.nats.bridge import INBOUND_DEFAULTS, Bridge, BridgeSettings
    from ..errors import ConfigError
    from ..router import EventRouter

    mapping = dict(INBOUND_DEFAULTS)
    if inbound:
        mapping = {}
        for item in inbound:
            subject, sep, kind = item.partition("=")
            if not sep or not subject or not kind:
                raise ConfigError(f"--inbound {item!r}: expected SUBJECT=MAPPING")
            mapping[subject] = kind
    settings = BridgeSettings(
        inbound=mapping,
        inbound_prefix=inbound_prefix,
        outbound_types=outbound_types or ["*"],
        outbound_prefix=outbound_prefix,
        stream=stream,
        durable=durable,
    )
    cfg = load(spool, config)
    router = EventRouter(config=cfg)

    def emit(envelopes: list[dict[str, Any]]) -> list[str]:
        return router.emit_many(envelopes)

    metadata = {"version": cfg.schema_version, "environment": cfg.environment, "service": cfg.service}
    bridge = Bridge(
        Link(servers_from(nats_url), name="poetctl-bridge"),
        emit,
        settings,
        inbound=not no_inbound,
        outbound=not no_outbound,
        metadata=metadata,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await bridge.run(stop, ready=lambda: print("bridge: ready", flush=True))

    asyncio.run(main())
    return 0
