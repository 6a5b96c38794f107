"""`poetctl daemon` honours the handler failure taxonomy: Permanent dead-letters at once, Retry(after=) sets
the next attempt's time (the in-process loop's behaviour, tests/contract, held on the filesystem daemon)."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_helpers.harness import events_dir, run_once, write_config

from poetctl import EventRouter

HANDLERS = """
import poetctl

def register(router):
    def permanent(event):
        if event.payload["service"] == "permanent":
            raise poetctl.Permanent("HTTP 404 from the endpoint")

    def later(event):
        if event.payload["service"] == "later":
            raise poetctl.Retry("HTTP 429", after=3600)

    router.subscribe("system.health", permanent, name="permanent")
    router.subscribe("system.health", later, name="later")
"""


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    ids = {
        s: router.emit("system.health", {"service": s, "status": "healthy"}, correlation_id=s)
        for s in ("permanent", "later", "ok")
    }
    handlers = tmp_path / "kinds.py"
    handlers.write_text(HANDLERS)
    # Plenty of attempts: a Permanent that were treated as an ordinary failure would be retried.
    config = write_config(tmp_path, max_attempts=5, backoff_base=0.0, backoff_cap=0.0)
    return spool, config, handlers, ids


def test_permanent_dead_letters_at_once_and_retry_after_sets_the_next_attempt(tmp_path: Path) -> None:
    """Permanent: dead after one attempt (reason permanent); Retry(after=3600): waiting, not_before = at + 3600."""
    spool, config, handlers, ids = _setup(tmp_path)
    p = run_once(tmp_path, spool, config, handlers=[handlers])
    assert p.returncode in (1, 75), p.stderr
    dead = json.loads((events_dir(spool, "dead") / f"{ids['permanent']}.error").read_text())
    assert dead["reason"] == "permanent"
    assert dead["attempts"] == 1
    assert [a["handler"] for a in dead["history"]] == ["permanent"]
    assert "HTTP 404" in dead["error"]
    assert (events_dir(spool, "processed") / f"{ids['ok']}.json").exists()
    # The Retry event waits for its hour (backoff would have made it due at once: base and cap are 0).
    record = json.loads((spool / "events" / "records" / f"{ids['later']}.json").read_text())
    (failure,) = record["failures"]
    assert failure["handler"] == "later"
    assert record["not_before"] - failure["at"] == 3600
    assert (events_dir(spool, "pending") / f"{ids['later']}.json").exists()
