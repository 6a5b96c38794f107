"""Inline dispatch (issue 16): emit runs the local subscribers before it returns, with a real lease."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from daemon_helpers.harness import (
    DEADLINE,
    EFFECTS,
    FOREVER_S,
    Daemons,
    clean_env,
    execution_payload,
    heartbeat_of,
    ids_in,
    inflight_ids,
    ok_counts,
    owner_dir,
    read_effects,
    retry_due,
    run_once,
    started_ids,
    wait_for,
    write_config,
)

from poetctl import EventRouter, load_config
from poetctl.errors import UsageError
from poetctl.event import Event
from poetctl.ids import uuid7
from poetctl.testing import Harness

METRICS = {"service": "svc", "metrics": {"n": 1}}


def fs_router(tmp_path: Path, spool: Path, dispatch: str = "queue", **daemon: Any) -> EventRouter:
    cfg = load_config(write_config(tmp_path, **daemon), spool=spool)
    return EventRouter(config=cfg, dispatch=dispatch)


def load_effects(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    """tests/daemon_helpers/effects.py, configured by ``env`` (as the daemon processes are)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("effects_under_test", EFFECTS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- the handler runs before emit returns ---------------------------------------------------------
@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_inline_handler_runs_before_emit_returns_and_the_event_is_processed(
    backend: str, tmp_path: Path, spool: Path
) -> None:
    """emit(dispatch="inline") returns after the handler ran and the event was acked (spool and memory)."""
    router = fs_router(tmp_path, spool) if backend == "fs" else Harness().router
    seen: list[tuple[str, str | None]] = []
    router.subscribe("system.metrics", lambda e: seen.append((e.id, str(router.transport.state_of(e.id)))))
    eid = router.emit("system.metrics", METRICS, dispatch="inline")
    assert seen == [(eid, "inflight")]  # leased while it ran
    assert router.transport.state_of(eid) == "processed"
    router.close()


@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_router_wide_inline_runs_follow_ups_before_emit_returns(backend: str, tmp_path: Path, spool: Path) -> None:
    """A router made with dispatch="inline" runs the whole chain (cause, then its follow-up) inside emit."""
    if backend == "fs":
        router = fs_router(tmp_path, spool, dispatch="inline")
    else:
        router = Harness().router
        router.dispatch = "inline"
    order: list[str] = []

    def first(e: Event) -> None:
        order.append("metrics")
        router.emit("system.health", {"service": "svc", "status": "healthy"})

    router.subscribe("system.metrics", first)
    router.subscribe("system.health", lambda e: order.append(f"health:{e.causation_id}"))
    eid = router.emit("system.metrics", METRICS)
    assert order == ["metrics", f"health:{eid}"]
    router.close()


def test_inline_emit_many_dispatches_each_new_event_in_order(tmp_path: Path, spool: Path) -> None:
    """emit_many(dispatch="inline") runs the handlers of every item, in order, before returning."""
    router = fs_router(tmp_path, spool)
    seen: list[str] = []
    router.subscribe("system.metrics", lambda e: seen.append(e.id))
    ids = router.emit_many(
        [("system.metrics", {"service": "s", "metrics": {"n": i}}) for i in range(3)], dispatch="inline"
    )
    assert seen == ids
    router.close()


def test_no_local_subscriber_leaves_the_event_for_the_consumers(tmp_path: Path, spool: Path) -> None:
    """Inline with no matching local subscriber claims nothing: the event waits in pending for a daemon."""
    router = fs_router(tmp_path, spool, dispatch="inline")
    router.subscribe("system.health", lambda e: None)
    eid = router.emit("system.metrics", METRICS)
    assert eid in ids_in(spool, "pending")
    router.close()


# -- failures: logged, recorded, retried by any consumer ---------------------------------------------
def test_failing_inline_handler_leaves_the_event_for_retry_and_a_daemon_retries_it(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure is logged, emit returns the id; the event waits in pending with its attempt; a daemon retries it."""
    effects_file = tmp_path / "effects.log"
    fail_ids = tmp_path / "fail_ids"
    eid = uuid7()
    fail_ids.write_text(f"{eid} 1\n")
    effects = load_effects(monkeypatch, EFFECTS_FILE=str(effects_file), FAIL_IDS_FILE=str(fail_ids))
    router = fs_router(tmp_path, spool)
    effects.register(router)
    with caplog.at_level("WARNING", logger="poetctl.daemon"):
        assert router.emit("system.metrics", METRICS, id=eid, dispatch="inline") == eid
    assert "handler failed" in caplog.text and eid in caplog.text
    assert eid in ids_in(spool, "pending")
    record = (spool / "events" / "records" / f"{eid}.json").read_text()
    assert "planned failure" in record
    router.close()

    wait_for(lambda: retry_due(spool, eid), "the retry time")
    r = run_once(tmp_path, spool, tmp_path / "poet.toml", env={"EFFECTS_FILE": str(effects_file)})
    assert r.returncode == 0, r.stderr
    lines = [e for e in read_effects(effects_file) if e.id == eid]
    assert [(e.ok, e.pid == os.getpid()) for e in lines] == [(False, True), (True, False)]
    assert eid in ids_in(spool, "processed")


def test_failing_inline_handler_on_memory_is_retried_by_another_consumer() -> None:
    """Memory backend (poetctl.testing): the failed inline attempt is handed back; the Harness daemon retries it."""
    h = Harness(max_attempts=3)
    calls: list[str] = []

    def flaky(e: Event) -> None:
        calls.append(e.id)
        if len(calls) == 1:
            raise ConnectionError("down")

    h.router.subscribe("system.metrics", flaky)
    eid = h.router.emit("system.metrics", METRICS, dispatch="inline")
    assert calls == [eid] and h.state_of(eid) == "pending"
    h.run_until_idle()
    assert calls == [eid]  # not due yet: the retry time is kept
    h.clock.advance(60)
    h.run_until_idle()
    assert calls == [eid, eid] and h.state_of(eid) == "processed"
    h.router.close()


# -- per-key order -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_inline_never_overtakes_an_earlier_event_of_its_key(backend: str, tmp_path: Path, spool: Path) -> None:
    """An earlier event of the same key still pending: the inline event waits behind it, order kept."""
    router = fs_router(tmp_path, spool) if backend == "fs" else Harness().router
    seen: list[str] = []
    router.subscribe("function.execution", lambda e: seen.append(e.id))
    first = router.emit("function.execution", execution_payload("detect_drift", 1))  # queued
    second = router.emit("function.execution", execution_payload("detect_drift", 2), dispatch="inline")
    assert seen == []
    other = router.emit("function.execution", execution_payload("other_fn", 3), dispatch="inline")
    assert seen == [other]  # another key runs at once
    router.run_until_idle(timeout=DEADLINE)
    assert seen == [other, first, second]
    router.close()


def test_inline_on_a_backend_that_cannot_lease_by_id_is_refused(tmp_path: Path) -> None:
    """dispatch="inline" on a transport without out-of-turn leases is a clear UsageError, before anything is written."""

    class PartitionOnly:  # what a NATS transport looks like to the router
        clock = staticmethod(lambda: 0.0)

        def publish(self, items: Any) -> list[bool]:
            raise AssertionError("nothing may be written")

    with pytest.raises(UsageError, match="inline"):
        EventRouter(transport=PartitionOnly(), dispatch="inline")  # type: ignore[arg-type]
    router = EventRouter(transport=PartitionOnly())  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="inline"):
        router.emit("system.metrics", METRICS, dispatch="inline")
    with pytest.raises(UsageError, match="dispatch 'sync'"):
        router.emit("system.metrics", METRICS, dispatch="sync")


# -- a real lease, and a SIGKILL inside the handler ---------------------------------------------------
CHILD = """
import importlib.util, sys
from poetctl import EventRouter, load_config
spec = importlib.util.spec_from_file_location("effects", {effects!r})
effects = importlib.util.module_from_spec(spec); spec.loader.exec_module(effects)
router = EventRouter(config=load_config({config!r}, spool={spool!r}), dispatch="inline")
effects.register(router)
router.emit("system.metrics", {{"service": "child", "metrics": {{"n": 1}}}})
print("emit returned", flush=True)
"""


def test_sigkill_during_an_inline_handler_loses_nothing_and_a_daemon_beside_never_runs_it_twice(
    tmp_path: Path, spool: Path, daemons: Daemons
) -> None:
    """The inline lease keeps a running daemon off the event; after SIGKILL its recovery handles it exactly once."""
    config = write_config(tmp_path)
    effects_file, started = tmp_path / "effects.log", tmp_path / "started.log"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(effects=str(EFFECTS), config=str(config), spool=str(spool))))
    env = {"EFFECTS_FILE": str(effects_file), "STARTED_FILE": str(started)}
    child_env = clean_env({**env, "SLEEP_S": FOREVER_S, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = subprocess.Popen(
        [sys.executable, str(script)], env=child_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        (eid,) = wait_for(lambda: started_ids(started), "the inline handler to start")
        mine = owner_dir(spool, child.pid)
        assert mine is not None and (mine / f"{eid}.json").exists()  # leased by the child, not in pending
        beside = daemons.start(spool, config, env=env)
        wait_for(lambda: heartbeat_of(spool, beside.pid), "the daemon beside to run", procs=[beside])
        assert child.poll() is None and eid not in ids_in(spool, "pending")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        out, _ = child.communicate(timeout=DEADLINE)
    assert child.returncode == -signal.SIGKILL and b"emit returned" not in out
    wait_for(lambda: eid in ids_in(spool, "processed"), "the daemon beside to recover and handle it", procs=[beside])
    assert ok_counts(effects_file) == {eid: 1}
    pids = [line.split("\t")[2] for line in started.read_text().splitlines()]
    assert pids == [str(child.pid), str(beside.pid)]
    assert beside.stop() == 0
    assert not inflight_ids(spool)
