"""The seam's own promises that are not per-backend: imports, the testing helpers, the failure taxonomy."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import poetctl
import poetctl.testing
from poetctl.daemon.core import key_function as core_key_function
from poetctl.event import Event
from poetctl.partition import DEFAULT_PARTITION_KEY, key_function, partition_key
from poetctl.testing import FakeClock, Harness
from poetctl.transport import Consumer, State, Transport


def test_generic_modules_import_no_backend_and_no_file_code() -> None:
    """The loop, the contract and the memory backend load without poetctl.spool, the fs daemon or os-level file code."""
    code = textwrap.dedent(
        """
        import sys
        import poetctl.daemon.loop, poetctl.transport, poetctl.backends.memory
        bad = sorted(m for m in sys.modules
                     if m.startswith(("poetctl.spool", "poetctl.backends.fs", "poetctl.ops", "poetctl.router"))
                     or m in ("poetctl.daemon.core", "poetctl.daemon.worker", "poetctl.query", "fcntl", "sqlite3"))
        print(",".join(bad))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_spool_package_keeps_its_public_name() -> None:
    """`from poetctl.spool import SpoolLayout` (the documented import) still gives the filesystem backend's class."""
    from poetctl.backends.fs.layout import SpoolLayout as FsLayout
    from poetctl.spool import SpoolLayout

    assert SpoolLayout is FsLayout


def test_memory_backend_satisfies_the_protocols() -> None:
    """MemoryTransport and its consumers are structurally a Transport and a Consumer."""
    h = Harness()
    assert isinstance(h.transport, Transport)
    assert isinstance(h.daemon.consumer, Consumer)


@pytest.mark.parametrize(
    "paths", [DEFAULT_PARTITION_KEY, ("payload.model_name", "type"), ("payload.a.b", "correlation_id"), ()]
)
@pytest.mark.parametrize(
    "payload,correlation",
    [
        ({"function_name": "f"}, "c"),
        ({"function_name": ""}, "c"),
        ({}, None),
        ({"model_name": "m", "a": {"b": 3}}, ""),
        ({"a": "not a dict"}, "c"),
    ],
)
def test_partition_key_matches_the_fs_daemon(paths: tuple[str, ...], payload: dict[str, Any], correlation: Any) -> None:
    """The fs daemon keys events with poetctl.partition itself (one implementation), which agrees with partition_key."""
    ev = Event("i", "drift.detected", "s", 1.0, "t", payload, correlation_id=correlation)
    assert core_key_function is key_function
    assert key_function(paths)(ev) == partition_key(ev, paths)


def test_the_testing_docstring_example_runs() -> None:
    """The example in poetctl.testing's docstring is a passing test."""
    doc = poetctl.testing.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\nNothing here", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(textwrap.dedent(block), "poetctl.testing example", "exec"), scope)
    tests = [v for k, v in scope.items() if k.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_permanent_and_retry_are_exported() -> None:
    """poetctl.Permanent and poetctl.Retry are the daemon's failure classes."""
    from poetctl.daemon import outcomes

    assert poetctl.Permanent is outcomes.Permanent and poetctl.Retry is outcomes.Retry
    assert {"Permanent", "Retry"} <= set(poetctl.__all__)


@pytest.mark.parametrize("after", [-1.0, math.nan])
def test_retry_refuses_a_negative_or_nan_delay(after: float) -> None:
    """Retry(after=...) must be a number of seconds >= 0."""
    with pytest.raises(ValueError, match="after"):
        poetctl.Retry(after=after)


def test_fake_clock_moves_only_forward() -> None:
    """FakeClock.advance refuses negative steps and set() never goes back."""
    c = FakeClock(100.0)
    assert c.advance(5) == 105.0
    assert c.set(50) == 105.0
    with pytest.raises(ValueError):
        c.advance(-1)


def test_run_until_idle_stops_a_handler_that_emits_without_end() -> None:
    """A handler that re-emits its own type forever makes run_until_idle raise instead of hanging."""
    h = Harness()
    h.router.subscribe(
        "system.health", lambda e: h.router.emit("system.health", {"service": "s", "status": "healthy"}), name="loop"
    )
    h.router.emit("system.health", {"service": "s", "status": "healthy"})
    with pytest.raises(RuntimeError, match="emit without end"):
        h.run_until_idle(max_rounds=20)


def test_router_on_a_transport_never_touches_the_filesystem(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Emitting through a Harness writes nothing to disk (not even ./.poet in the working directory)."""
    monkeypatch.chdir(tmp_path)
    h = Harness()
    eid = h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.run_until_idle()
    assert h.state_of(eid) == State.PROCESSED
    assert list(tmp_path.iterdir()) == []


def test_a_self_emitting_handler_stops_at_the_hop_limit() -> None:
    """A handler that emits what it subscribes to is dead-lettered at the hop limit at once (permanent), no retry."""
    from poetctl.config import Config

    h = Harness(config=Config(daemon={"max_causation_depth": 2}), max_attempts=3)
    h.router.subscribe(
        "system.health", lambda e: h.router.emit("system.health", {"service": "s", "status": "healthy"}), name="echo"
    )
    h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.drain()
    (dead,) = h.events(states=[State.DEAD])
    info = h.dead_letter(dead.id)
    assert info is not None and info["error"].startswith("CausationDepthExceeded")
    assert info["reason"] == "permanent" and info["attempts"] == 1
    assert len(h.events(states=[State.PROCESSED])) == 2  # depths 0 and 1; depth 2's follow-up was refused
