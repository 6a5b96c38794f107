"""In-process consumption (issue 16): router.start / run_until_idle / close on the daemon's loop."""

from __future__ import annotations

import importlib.util
import threading
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from daemon_helpers.harness import (
    DEADLINE,
    EFFECTS,
    Daemons,
    emit_chunked,
    execution_payload,
    heartbeat_of,
    ids_in,
    inflight_ids,
    read_effects,
    wait_for,
    write_config,
)

from poetctl import EventRouter, load_config
from poetctl.event import Event
from poetctl.testing import Harness

METRICS = {"service": "svc", "metrics": {"n": 1}}
SHARED_EVENTS = 10_000  # the figure; a daemon drains ~20k/s, so this stays a few seconds


def fs_router(tmp_path: Path, spool: Path, **daemon: Any) -> EventRouter:
    return EventRouter(config=load_config(write_config(tmp_path, **daemon), spool=spool))


def load_effects(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("effects_in_process", EFFECTS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_in_process_consumer_and_a_daemon_share_a_spool_each_event_handled_once(
    tmp_path: Path, spool: Path, daemons: Daemons, monkeypatch: pytest.MonkeyPatch
) -> None:
    """router.start() beside a real `poetctl daemon`: both handle some of 10,000 events, each once, in key order."""
    effects_file = tmp_path / "effects.log"
    env = {"EFFECTS_FILE": str(effects_file), "EFFECT_TYPES": "function.execution"}
    config = write_config(tmp_path, workers=2)
    daemon = daemons.start(spool, config, env=env)
    wait_for(lambda: heartbeat_of(spool, daemon.pid), "the daemon to start", procs=[daemon])
    router = EventRouter(config=load_config(config, spool=spool))
    load_effects(monkeypatch, **env).register(router)
    router.start(workers=2)
    names = [f"fn_{i}" for i in range(64)]
    items = [("function.execution", execution_payload(names[i % 64], i)) for i in range(SHARED_EVENTS)]
    ids = emit_chunked(router, items)
    wait_for(lambda: len(ids_in(spool, "processed")) == SHARED_EVENTS, "every event processed", procs=[daemon])
    assert router.close() == []
    assert daemon.stop() == 0

    effects = [e for e in read_effects(effects_file) if e.ok]
    by_id: dict[str, int] = defaultdict(int)
    for e in effects:
        by_id[e.id] += 1
    assert set(by_id) == set(ids) and set(by_id.values()) == {1}  # each exactly once
    pids = {e.pid for e in effects}
    assert len(pids) == 2  # shared: the test process and the daemon both handled some
    position = {eid: n for n, eid in enumerate(ids)}
    key_of = {eid: names[n % 64] for n, eid in enumerate(ids)}
    per_key: dict[str, list[int]] = defaultdict(list)
    for e in effects:
        per_key[key_of[e.id]].append(position[e.id])
    assert all(p == sorted(p) for p in per_key.values())  # per-key order across the two consumers
    assert not inflight_ids(spool) and not ids_in(spool, "pending")


def test_in_process_consumer_shares_a_memory_transport_with_another_consumer() -> None:
    """Memory backend (poetctl.testing): a started router and the Harness daemon share events, each handled once."""
    h = Harness()
    seen: list[str] = []
    lock = threading.Lock()

    def record(e: Event) -> None:
        with lock:
            seen.append(e.id)

    h.router.subscribe("function.execution", record)
    h.router.start(workers=2)
    ids = [h.router.emit("function.execution", execution_payload(f"fn_{i % 16}", i)) for i in range(2000)]
    h.run_until_idle()
    h.router.run_until_idle(timeout=DEADLINE)
    assert sorted(seen) == sorted(ids)
    assert all(h.state_of(i) == "processed" for i in ids)
    h.router.close()


@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_close_with_work_in_flight_hands_it_back(backend: str, tmp_path: Path, spool: Path) -> None:
    """close(): the running handler finishes, the key's later leased events go back to pending (their ids returned)."""
    router = fs_router(tmp_path, spool) if backend == "fs" else Harness().router
    running = threading.Event()
    handled: list[str] = []

    def slow(e: Event) -> None:
        if not handled:
            running.set()
            c = router.consuming
            assert c is not None
            c.stop_requested.wait(DEADLINE)  # finish only once close() has asked the loop to stop
        handled.append(e.id)

    router.subscribe("function.execution", slow)
    ids = router.emit_many([("function.execution", execution_payload("detect_drift", i)) for i in range(4)])
    router.start(workers=1)
    assert running.wait(DEADLINE)
    closing = threading.Thread(target=lambda: released.extend(router.close()))
    released: list[str] = []
    closing.start()
    closing.join(DEADLINE)
    assert not closing.is_alive()
    assert handled == ids[:1]
    assert router.transport.state_of(ids[0]) == "processed"
    assert all(router.transport.state_of(i) == "pending" for i in ids[1:])
    assert released and set(released) <= set(ids[1:])  # the worker's leased batch, handed back
    router.run_until_idle(timeout=DEADLINE)  # nothing lost: handled later, in order
    assert handled == ids


@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_run_until_idle_handles_what_is_due_and_returns_without_waiting_for_retries(
    backend: str, tmp_path: Path, spool: Path
) -> None:
    """Not started: handles every due event on this thread, then returns; a retry an hour away is handed back."""
    if backend == "fs":
        router = fs_router(tmp_path, spool, backoff_base=3600, backoff_cap=3600)
    else:
        router = Harness(backoff_base=3600, backoff_cap=3600).router
    calls: list[str] = []

    def handler(e: Event) -> None:
        calls.append(e.id)
        if e.payload["execution_id"] == "exec-0":
            raise RuntimeError("retry me later")

    router.subscribe("function.execution", handler)
    failing = router.emit("function.execution", execution_payload("flaky_fn", 0))
    ok = [router.emit("function.execution", execution_payload(f"fn_{i}", i)) for i in range(1, 4)]
    assert router.run_until_idle(timeout=60) == 3
    assert sorted(calls) == sorted([failing, *ok])
    assert all(router.transport.state_of(i) == "processed" for i in ok)
    assert router.transport.state_of(failing) == "pending"  # handed back with its retry time
    assert router.run_until_idle(timeout=60) == 0  # nothing due: returns at once
    assert len(calls) == 4
    if backend == "fs":
        assert not inflight_ids(spool)


@pytest.mark.parametrize("backend", ["fs", "memory"])
def test_run_until_idle_on_a_started_router_waits_for_the_background_consumer(
    backend: str, tmp_path: Path, spool: Path
) -> None:
    """Started: run_until_idle returns once the background consumer has handled what was emitted before the call."""
    with fs_router(tmp_path, spool) if backend == "fs" else Harness().router as router:
        seen: list[str] = []
        router.subscribe("system.metrics", lambda e: seen.append(e.id))
        router.start(workers=2)
        ids = [router.emit("system.metrics", {"service": "s", "metrics": {"n": i}}) for i in range(50)]
        router.run_until_idle(timeout=DEADLINE)
        assert seen == ids  # one key: in order
    assert router.consuming is None
