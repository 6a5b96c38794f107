"""Priority delivery: emit --priority, the envelope field, the spool's fast lane and its key ledger."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from poetctl.backends.fs.priority import HINTS
from poetctl.backends.fs.transport import FsTransport
from poetctl.handlers.ml_monitoring import delivery_priority
from poetctl.router import EventRouter
from poetctl.transport import Outgoing

HEALTH = '{"service": "svc", "status": "healthy"}'


def stored(spool: Path, event_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((spool / "events" / "pending" / f"{event_id}.json").read_bytes())
    return data


def hints(spool: Path) -> list[str]:
    d = spool / HINTS
    return sorted(os.listdir(d)) if d.is_dir() else []


def test_emit_priority_is_stored_and_normal_is_absent(run_cli: Any, spool: Path) -> None:
    """emit --priority high/low writes envelope priority; normal (explicit or default) leaves it absent."""
    got = {}
    for p in ("high", "low", "normal", None):
        args = ["emit", "system.health", HEALTH, "--spool", spool, "--correlation-id", f"c-{p}"]
        r = run_cli(*args, *(["--priority", p] if p else []))
        assert r.returncode == 0, r.stderr
        got[p] = stored(spool, r.stdout.strip()).get("priority", "absent")
    assert got == {"high": "high", "low": "low", "normal": "absent", None: "absent"}


def test_emit_priority_typer_path_and_batch(run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """--priority=low through typer (an option the fast path does not take) and on --batch --type payloads."""
    r = run_cli("emit", "--init", "system.health", HEALTH, "--spool", spool, "--priority", "low")
    assert r.returncode == 0, r.stderr
    assert stored(spool, r.stdout.strip())["priority"] == "low"
    b = tmp_path / "b.jsonl"
    b.write_text(HEALTH + "\n" + HEALTH + "\n")
    r = run_cli("emit", "--batch", b, "--type", "system.health", "--priority", "high", "--spool", spool)
    assert r.returncode == 0, r.stderr
    assert [stored(spool, i)["priority"] for i in r.stdout.split()] == ["high", "high"]


def test_emit_bad_priority_is_a_usage_error(run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """An unknown --priority exits 2 with one line naming the choices, and writes nothing."""
    for extra in ([], ["--init"]):
        r = run_cli("emit", "system.health", HEALTH, "--spool", spool, "--priority", "urgent", *extra)
        assert r.returncode == 2, r.stderr
        assert "expected one of high, normal, low" in r.stderr and "Traceback" not in r.stderr
    b = tmp_path / "e.jsonl"
    b.write_text("{}\n")
    r = run_cli("emit", "--batch", b, "--priority", "high", "--spool", spool)
    assert r.returncode == 2 and "--priority goes with" in r.stderr
    assert list((spool / "events" / "pending").iterdir()) == []


def test_envelope_with_a_bad_priority_is_refused(router: EventRouter) -> None:
    """A sealed envelope whose priority is not high/normal/low is invalid input (65), not stored."""
    import pytest

    from poetctl.errors import InvalidData

    with pytest.raises(InvalidData, match="priority"):
        router.emit("system.health", {"service": "s", "status": "healthy"}, priority="urgent")


def _item(router: EventRouter, key: str, priority: str | None = None) -> Outgoing:
    ev, keyed = router.build(
        "system.health", {"service": "s", "status": "healthy"}, correlation_id=key, priority=priority
    )
    return Outgoing(ev, ev.to_json(), keyed)


def test_fast_lane_only_for_keys_with_nothing_unfinished(spool: Path) -> None:
    """A high event gets a hint only if its key has nothing pending or in flight; same group counts too."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    t.publish([_item(r, "busy")])
    busy_high, free_high = _item(r, "busy", "high"), _item(r, "free", "high")
    t.publish([busy_high, free_high])
    assert hints(spool) == [free_high.event.id]
    same_group = [_item(r, "g"), _item(r, "g", "high")]
    t.publish(same_group)
    assert same_group[1].event.id not in hints(spool)


def test_fast_lane_again_once_the_key_is_finished(spool: Path) -> None:
    """After a key's events were handled (gone from pending and in flight), its next high event jumps."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    first = _item(r, "k")
    t.publish([first])
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    try:
        (d,) = c.fetch(10).deliveries
        second = _item(r, "k", "high")
        t.publish([second])  # the first is in flight: no jump
        assert second.event.id not in hints(spool)
        c.ack(d)
        (d2,) = c.fetch(10).deliveries
        c.ack(d2)
        third = _item(r, "k", "high")
        t.publish([third])
        assert hints(spool) == [third.event.id]
    finally:
        c.close()
        t.close()


def test_ledger_made_on_a_busy_spool_gives_no_jump_to_unknown_keys(spool: Path) -> None:
    """Events that predate the ledger are unknown: a high event of a never-noted key does not jump."""
    r = EventRouter(spool=spool)
    ev, _ = r.build("system.health", {"service": "s", "status": "healthy"}, correlation_id="old")
    (spool / "events" / "pending" / f"{ev.id}.json").write_bytes(ev.to_json())  # as an older poetctl wrote it
    t = FsTransport(spool)
    high = _item(r, "old", "high")
    t.publish([high])
    assert hints(spool) == []


def test_alert_priority_from_investigation_priority() -> None:
    """The built-in handlers map the seed's investigation priority to the envelope priority."""
    assert [delivery_priority(p) for p in ("critical", "high", "medium", "low")] == ["high", "high", "normal", "low"]


def _same_bucket_keys(n: int) -> list[str]:
    """``n`` correlation keys whose partition keys fall into one ledger bucket."""
    from poetctl.backends.fs.priority import BUCKETS, key_hash

    want = int.from_bytes(key_hash("correlation_id=b0"), "little") % BUCKETS
    out = ["b0"]
    i = 0
    while len(out) < n:
        i += 1
        k = f"b{i}"
        if int.from_bytes(key_hash(f"correlation_id={k}"), "little") % BUCKETS == want:
            out.append(k)
    return out


def test_full_bucket_evicts_a_settled_key_and_keeps_the_jump(spool: Path) -> None:
    """Five keys in one 4-way bucket: with the first four finished, a new key's high event still jumps."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    keys = _same_bucket_keys(6)
    t.publish([_item(r, k) for k in keys[:4]])
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    try:
        for d in c.fetch(10).deliveries:
            c.ack(d)
        t.publish([_item(r, keys[4])])  # evicts a settled key: nothing lost
        high = _item(r, keys[5], "high")
        t.publish([high])
        assert hints(spool) == [high.event.id]
    finally:
        c.close()
        t.close()


def test_full_bucket_of_unfinished_keys_refuses_the_jump(spool: Path) -> None:
    """Five keys in one bucket, none finished: one was evicted unknown, so a new key's high event waits."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    keys = _same_bucket_keys(6)
    t.publish([_item(r, k) for k in keys[:5]])
    high = _item(r, keys[5], "high")
    t.publish([high])
    assert hints(spool) == []
    t.close()
