"""``poetctl forward`` (hybrid mode's outbox forwarder, in the foreground) and ``poetctl bridge``."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import SpoolIOError
from .common import ConfigOpt, SpoolOpt, errors_to_exit, load

NatsUrlOpt = Annotated[
    str | None,
    typer.Option("--nats-url", help="NATS server URL(s), comma-separated (else POET_NATS_URL).", show_default=False),
]


def forward_cmd(
    once: Annotated[
        bool, typer.Option("--once", help="Forward the backlog, then exit (75 if NATS could not take all of it).")
    ] = False,
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
    raise typer.Exit(_forward(once, nats_url, spool, config))


@errors_to_exit
def _forward(once: bool, nats_url: str | None, spool: Path | None, config: Path | None) -> int:
    import os
    import threading

    from ..backends.fs.layout import SpoolLayout
    from ..backends.nats.forwarder import Forwarder, nats_sink
    from .output import error

    cfg = load(spool, config)
    if nats_url:
        os.environ["POET_NATS_URL"] = nats_url  # read by the NATS settings, like the variable itself
    layout = SpoolLayout(cfg.spool).require()
    fw = Forwarder(layout, nats_sink(cfg.nats), max_event_bytes=cfg.max_event_bytes)
    if once:
        try:
            fw.round()
            return 0
        except (OSError, SpoolIOError):
            raise
        except Exception as exc:  # NATS down, slow or not set up: the backlog stays, try again later
            fw.note_failure(exc)
            error(f"forward: {fw.stats.last_error}; {fw.stats.backlog.count} event(s) wait in the spool")
            return 75
        finally:
            fw.close()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    fw.run(stop)
    return 0


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
    import os

    from ..backends.nats._link import AsyncLink
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
    if nats_url:
        os.environ["POET_NATS_URL"] = nats_url  # read by the NATS settings, like the variable itself
    from ..backends.nats.settings import NatsSettings

    link = AsyncLink.from_settings(NatsSettings.from_config(cfg.nats), "poetctl-bridge")
    router = EventRouter(config=cfg)

    def emit(envelopes: list[dict[str, Any]]) -> list[str]:
        return router.emit_many(envelopes)

    metadata = {"version": cfg.schema_version, "environment": cfg.environment, "service": cfg.service}
    bridge = Bridge(
        link,
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
