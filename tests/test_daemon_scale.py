"""poetctl daemon at volume: several daemons sharing one spool, and bursts faster than inotify."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    NOOP,
    Daemons,
    count_json,
    emit_executions,
    events_dir,
    heartbeat_of,
    ids_in,
    inflight_ids,
    read_effects,
    wait_for,
    write_config,
)

from poetctl import EventRouter


# -- 3. shared spool --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("emit_while_running", [False, True], ids=["emit-first", "emit-while-running"])
def test_three_daemons_share_a_spool_each_event_handled_exactly_once(
    tmp_path: Path, sp: Path, daemons: Daemons, emit_while_running: bool
) -> None:
    """Three daemons on one spool with 10,000 events: every effect happens exactly once, in per-key order.

    Emitting while the daemons run makes their listings race the group commits' renames (a
    directory listing may show a later file of a key and miss an earlier one renamed in meanwhile).
    """
    # A small max_inflight keeps one daemon from claiming everything before the others start.
    cfg = write_config(tmp_path, max_inflight=200, heartbeat_interval=0.2)
    fn_names = [f"fn_{k:02d}" for k in range(40)]
    effects = tmp_path / "effects.txt"
    # A fixed 2 ms per event: one daemon alone needs >= 5 s (250 events a key, one key at a time
    # per worker), so the others are surely running while work remains, on any machine.
    env = {"EFFECTS_FILE": str(effects), "SLEEP_S": "0.002"}
    if emit_while_running:
        procs = [daemons.start(sp, cfg, env=env) for _ in range(3)]
        wait_for(lambda: all(heartbeat_of(sp, p.pid) for p in procs), "three heartbeats", procs=procs)
    ids = emit_executions(sp, fn_names, 250, grouped=True)
    key_of = {eid: fn_names[i // 250] for i, eid in enumerate(ids)}
    if not emit_while_running:
        procs = [daemons.start(sp, cfg, env=env) for _ in range(3)]
    processed = events_dir(sp, "processed")
    for p in procs:
        wait_for(lambda p=p: heartbeat_of(sp, p.pid), f"daemon {p.pid} to start", procs=procs)
    left = len(ids) - count_json(processed)
    assert left > 0, "all three daemons must be running while work remains"
    wait_for(lambda: count_json(processed) >= len(ids), "all 10,000 events processed", procs=procs, interval=0.2)
    codes = [p.stop() for p in procs]
    assert codes == [0, 0, 0], [p.stderr() for p in procs]

    assert ids_in(sp, "processed") == set(ids)
    assert ids_in(sp, "pending") == set() and inflight_ids(sp) == set()
    calls = [c for c in read_effects(effects) if c.ok]
    per_id = Counter(c.id for c in calls)
    assert set(per_id) == set(ids)
    dup = {i: n for i, n in per_id.items() if n != 1}
    assert not dup, f"{len(dup)} events handled more than once, e.g. {list(dup.items())[:3]}"
    split = Counter(c.pid for c in calls)
    print(f"per-pid split: {dict(split)}; {left} events left when the last daemon started")
    assert set(split) <= {p.pid for p in procs}
    assert len(split) > 1, f"only one daemon did any work: {dict(split)}"
    position = {eid: i for i, eid in enumerate(ids)}
    seen: dict[str, list[int]] = defaultdict(list)
    for c in calls:
        seen[key_of[c.id]].append(position[c.id])
    bad = [k for k, pos in seen.items() if pos != sorted(pos)]
    assert not bad, f"per-key order broken across daemons for {bad[:3]}"
    shutil.rmtree(sp)  # passed: spare later sessions from deleting this many files


# -- 4. burst faster than inotify ----------------------------------------------------------------
@pytest.mark.slow
def test_burst_of_50k_files_written_straight_into_pending_is_all_processed(
    tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """50,000 event files renamed into pending faster than inotify reports them are all processed."""
    router = EventRouter(spool=sp)
    payload = {"service": "burst", "metrics": {"n": 1}}
    blobs = []
    for _ in range(50_000):
        ev, _keyed = router.build("system.metrics", payload)
        blobs.append((ev.id, ev.to_json()))
    cfg = write_config(tmp_path, rescan_interval=1.0)
    d = daemons.start(sp, cfg, handlers=[NOOP])
    wait_for(lambda: heartbeat_of(sp, d.pid), "the daemon to start", procs=[d])

    tmp, pending = events_dir(sp, "tmp"), events_dir(sp, "pending")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for eid, data in blobs:
        name = eid + ".json"
        fd = os.open(tmp / name, flags, 0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp / name, pending / name)

    processed = events_dir(sp, "processed")
    wait_for(
        lambda: count_json(processed) >= len(blobs),
        "all 50,000 burst events processed",
        timeout=300,
        procs=[d],
        interval=0.25,
    )
    assert d.stop() == 0, d.stderr()
    assert ids_in(sp, "processed") == {eid for eid, _ in blobs}
    assert ids_in(sp, "pending") == set() and inflight_ids(sp) == set()
    assert ids_in(sp, "corrupt") == set() and ids_in(sp, "dead") == set()
    shutil.rmtree(sp)  # passed: spare later sessions from deleting this many files
