"""`poetctl emit`, `validate`, `init`, `config show` as real processes; EventRouter.emit_many."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import CLI_TIMEOUT, all_event_files, clean_env, files_in

from poetctl import EventRouter
from poetctl.errors import InvalidData
from poetctl.event import verify_checksum

EX_DATAERR, EX_NOINPUT, EX_IOERR = 65, 66, 74


def pending(spool: Path) -> list[Path]:
    return files_in(spool / "events" / "pending")


def tmp_files(spool: Path) -> list[Path]:
    return files_in(spool / "events" / "tmp")


def drift(samples: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A valid drift.detected payload with ``changes`` applied."""
    return dict(json.loads(json.dumps(samples["drift.detected"]["valid"][0])), **changes)


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def read_event(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_bytes())
    assert isinstance(obj, dict)
    return obj


def assert_nothing_written(spool: Path) -> None:
    assert pending(spool) == []
    assert tmp_files(spool) == []
    assert all_event_files(spool) == []


# -- single emit ------------------------------------------------------------------


def test_emit_prints_only_the_id_and_writes_the_event(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """`emit drift.detected FILE` prints one line (the id), exits 0 and writes a sealed event."""
    payload = drift(samples)
    pfile = write_json(tmp_path / "payload.json", payload)
    r = run_cli(
        "emit",
        "drift.detected",
        pfile,
        "--spool",
        spool,
        "--correlation-id",
        "drift-alert-123",
        "--causation-id",
        "cause-1",
        "--environment",
        "staging",
        "--source",
        "poet.generator",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    eid = lines[0]
    assert r.stdout == eid + "\n"
    path = spool / "events" / "pending" / f"{eid}.json"
    assert pending(spool) == [path]
    ev = read_event(path)
    assert ev["id"] == eid
    assert ev["type"] == "drift.detected"
    assert ev["topic"] == "poet/functions/detect_drift/execution"
    assert ev["correlation_id"] == "drift-alert-123"
    assert ev["causation_id"] == "cause-1"
    assert ev["source"] == "poet.generator"
    assert ev["metadata"]["environment"] == "staging"
    assert ev["payload"] == payload
    verify_checksum(ev)
    assert tmp_files(spool) == []


@pytest.mark.parametrize("how", ["no-argument", "dash"])
def test_emit_reads_payload_from_stdin(run_cli: Any, spool: Path, samples: dict[str, Any], how: str) -> None:
    """The payload comes from stdin when PAYLOAD is omitted or is '-'."""
    payload = drift(samples, execution_id=f"stdin-{how}")
    args = ["emit", "drift.detected", "--spool", spool] + (["-"] if how == "dash" else [])
    r = run_cli(*args, input=json.dumps(payload))
    assert r.returncode == 0, r.stderr
    eid = r.stdout.strip()
    ev = read_event(spool / "events" / "pending" / f"{eid}.json")
    assert ev["payload"] == payload
    verify_checksum(ev)


# -- idempotency keys --------------------------------------------------------------


def test_emit_same_id_twice_is_a_noop(run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]) -> None:
    """Emitting --id KEY twice prints KEY both times and leaves exactly one file in the spool."""
    pfile = write_json(tmp_path / "p.json", drift(samples))
    first = run_cli("emit", "drift.detected", pfile, "--id", "job-42", "--spool", spool)
    assert first.returncode == 0, first.stderr
    before = (spool / "events" / "pending" / "job-42.json").read_bytes()
    pfile2 = write_json(tmp_path / "p2.json", drift(samples, drift_score=0.5))
    second = run_cli("emit", "drift.detected", pfile2, "--id", "job-42", "--spool", spool)
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout == "job-42\n"
    assert all_event_files(spool) == [spool / "events" / "pending" / "job-42.json"]
    assert (spool / "events" / "pending" / "job-42.json").read_bytes() == before
    assert tmp_files(spool) == []


def test_emit_existing_id_in_processed_is_a_noop(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """Re-emitting an id whose event already moved to events/processed writes nothing new."""
    pfile = write_json(tmp_path / "p.json", drift(samples))
    assert run_cli("emit", "drift.detected", pfile, "--id", "job-7", "--spool", spool).returncode == 0
    processed = spool / "events" / "processed" / "job-7.json"
    (spool / "events" / "pending" / "job-7.json").rename(processed)
    r = run_cli("emit", "drift.detected", pfile, "--id", "job-7", "--spool", spool)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "job-7\n"
    assert pending(spool) == []
    assert all_event_files(spool) == [processed]


# Imports happen before the barrier so that all racers reach the commit together.
RACER = r"""
import os, sys, time
from poetctl.cli import main
import poetctl.router, poetctl.backends.fs.writer, poetctl.schemas
ready, barrier = sys.argv[1], sys.argv[2]
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(barrier):
    if time.monotonic() > deadline:
        sys.exit("barrier never opened")
    time.sleep(0.0005)
sys.argv = ["poetctl", *sys.argv[3:]]
main()
"""


def test_concurrent_emits_of_one_id_leave_one_file(spool: Path, tmp_path: Path, samples: dict[str, Any]) -> None:
    """8 processes emitting one --id at once all print it, exit 0, and leave exactly one file."""
    pfile = write_json(tmp_path / "p.json", drift(samples))
    env = clean_env()
    for rnd in range(5):
        key = f"race-{rnd}"
        sync = tmp_path / f"sync-{rnd}"
        sync.mkdir()
        barrier = sync / "go"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RACER,
                    str(sync / f"ready-{i}"),
                    str(barrier),
                    "emit",
                    "drift.detected",
                    str(pfile),
                    "--id",
                    key,
                    "--spool",
                    str(spool),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=tmp_path,
            )
            for i in range(8)
        ]
        try:
            deadline = time.monotonic() + 60
            while len(list(sync.glob("ready-*"))) < 8 and all(p.poll() is None for p in procs):
                assert time.monotonic() < deadline, "racers never became ready"
                time.sleep(0.005)
            barrier.touch()
            outs = [p.communicate(timeout=CLI_TIMEOUT) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err.decode()
            assert out.decode() == key + "\n"
        named = [f for f in all_event_files(spool) if f.name == f"{key}.json"]
        assert named == [spool / "events" / "pending" / f"{key}.json"]
        verify_checksum(read_event(named[0]))
        assert tmp_files(spool) == []
    assert len(all_event_files(spool)) == 5


# -- bad input ---------------------------------------------------------------------


def _nested(depth: int) -> Any:
    node: Any = {}
    for _ in range(depth - 1):
        node = {"d": node}
    return node


class Bad(NamedTuple):
    """One bad-input case: what is emitted and what must come back."""

    event_type: str
    content: Any  # bytes, a name for _bad_content, or None for a missing file
    code: int
    expect: tuple[str, ...]  # fragments of stderr
    extra: tuple[str, ...] = ()
    env: dict[str, str] | None = None


BAD_INPUTS = [
    pytest.param(
        Bad("drift.detected", b'{"execution_id": ', EX_DATAERR, ("in.json", "invalid JSON")),
        id="invalid-json",
    ),
    pytest.param(
        Bad("system.health", b'{"service": "\xff\xfe"}', EX_DATAERR, ("in.json", "UTF-8")),
        id="non-utf8",
    ),
    pytest.param(
        Bad("drift.detected", "drift_score_string", EX_DATAERR, ("in.json", "$.payload.drift_score")),
        id="schema-violation",
    ),
    pytest.param(
        Bad("no.such", b"{}", EX_DATAERR, ("no.such", "POET_SCHEMA_PATH")),
        id="unknown-type",
    ),
    pytest.param(
        Bad("drift.detected", None, EX_NOINPUT, ("in.json", "no such file")),
        id="missing-file",
    ),
    pytest.param(
        Bad(
            "system.health",
            "oversize",
            EX_DATAERR,
            ("in.json", "1000 bytes"),
            env={"POET_MAX_EVENT_BYTES": "1000"},
        ),
        id="oversize",
    ),
    pytest.param(
        Bad("system.health", "nested", EX_DATAERR, ("in.json", "nested deeper than 64")),
        id="nesting-200",
    ),
    pytest.param(
        Bad("drift.detected", "fn_escape", EX_DATAERR, ("in.json", "$.payload.function_name")),
        id="function-name-escape",
    ),
    pytest.param(
        Bad(
            "drift.detected",
            "good",
            EX_DATAERR,
            ("in.json", "'../x'", "$.id"),
            extra=("--id", "../x"),
        ),
        id="id-escape",
    ),
    pytest.param(
        Bad("drift.detected", b"[1, 2]", EX_DATAERR, ("in.json", "expected a JSON object")),
        id="bare-array",
    ),
]


def _bad_content(kind: Any, samples: dict[str, Any]) -> bytes | None:
    if kind is None or isinstance(kind, bytes):
        return kind
    if kind == "good":
        return json.dumps(drift(samples)).encode()
    if kind == "drift_score_string":
        return json.dumps(drift(samples, drift_score="0.82")).encode()
    if kind == "fn_escape":
        return json.dumps(drift(samples, function_name="../../etc")).encode()
    if kind == "oversize":
        data = json.dumps({"service": "s", "status": "healthy", "details": {"pad": "x" * 1939}}).encode()
        assert len(data) == 2000
        return data
    if kind == "nested":
        return json.dumps({"service": "s", "status": "healthy", "details": _nested(200)}).encode()
    raise AssertionError(kind)


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_emit_bad_input_exits_with_code_and_writes_nothing(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any], bad: Bad
) -> None:
    """Bad input exits 65/66 naming the input and what was expected; nothing is written."""
    content = _bad_content(bad.content, samples)
    if content is not None:
        (tmp_path / "in.json").write_bytes(content)
    r = run_cli("emit", bad.event_type, "in.json", "--spool", spool, *bad.extra, env=bad.env)
    assert r.returncode == bad.code, (r.stdout, r.stderr)
    assert r.stdout == ""
    for frag in bad.expect:
        assert frag in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("poetctl: error: ")
    assert_nothing_written(spool)


def test_emit_unknown_type_names_the_input(run_cli: Any, spool: Path, tmp_path: Path) -> None:
    """An unknown type's error names the input file it came from, like every other data error."""
    (tmp_path / "in.json").write_bytes(b"{}")
    r = run_cli("emit", "no.such", "in.json", "--spool", spool)
    assert r.returncode == EX_DATAERR
    assert "in.json" in r.stderr
    assert_nothing_written(spool)


# -- batches -----------------------------------------------------------------------


def _batch_lines(samples: dict[str, Any], n: int) -> list[bytes]:
    return [json.dumps(drift(samples, execution_id=f"exec-{i}")).encode() for i in range(n)]


def test_emit_batch_of_bare_payloads(run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]) -> None:
    """`emit --batch FILE --type T` of 1,000 payloads prints 1,000 ids in order; files exist."""
    bfile = tmp_path / "batch.jsonl"
    bfile.write_bytes(b"\n".join(_batch_lines(samples, 1000)) + b"\n")
    r = run_cli("emit", "--batch", bfile, "--type", "drift.detected", "--spool", spool)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.splitlines()
    assert len(ids) == 1000
    assert len(set(ids)) == 1000
    for i, eid in enumerate(ids):
        ev = read_event(spool / "events" / "pending" / f"{eid}.json")
        assert ev["payload"]["execution_id"] == f"exec-{i}"
        assert ev["type"] == "drift.detected"
    assert ids == sorted(ids)  # uuid7s in emit order
    verify_checksum(read_event(spool / "events" / "pending" / f"{ids[-1]}.json"))
    assert len(pending(spool)) == 1000
    assert tmp_files(spool) == []


def _batch_with_bad_line(tmp_path: Path, samples: dict[str, Any]) -> Path:
    lines = _batch_lines(samples, 10)
    lines[6] = json.dumps(drift(samples, method="chi_square")).encode()  # line 7
    bfile = tmp_path / "mixed.jsonl"
    bfile.write_bytes(b"\n".join(lines) + b"\n")
    return bfile


def test_emit_batch_with_a_bad_line_writes_nothing(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """One invalid line makes the whole batch fail with 65 naming FILE:LINE; nothing is written."""
    bfile = _batch_with_bad_line(tmp_path, samples)
    r = run_cli("emit", "--batch", bfile, "--type", "drift.detected", "--spool", spool)
    assert r.returncode == EX_DATAERR
    assert r.stdout == ""
    assert f"{bfile}:7" in r.stderr
    assert "$.payload.method" in r.stderr
    assert_nothing_written(spool)


def test_emit_batch_skip_invalid_commits_the_good_lines(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """With --skip-invalid the valid lines are committed, the bad one reported, exit is 65."""
    bfile = _batch_with_bad_line(tmp_path, samples)
    r = run_cli("emit", "--batch", bfile, "--type", "drift.detected", "--skip-invalid", "--spool", spool)
    assert r.returncode == EX_DATAERR
    ids = r.stdout.splitlines()
    assert len(ids) == 9
    assert f"{bfile}:7" in r.stderr
    written = {read_event(p)["payload"]["execution_id"] for p in pending(spool)}
    assert written == {f"exec-{i}" for i in range(10) if i != 6}
    assert {p.name[:-5] for p in pending(spool)} == set(ids)
    assert tmp_files(spool) == []


def test_emit_batch_round_trip(run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]) -> None:
    """Event files fed back as batch lines are re-emitted with the same ids and content."""
    ids = []
    for i in range(3):
        pfile = write_json(tmp_path / f"p{i}.json", drift(samples, execution_id=f"rt-{i}"))
        r = run_cli("emit", "drift.detected", pfile, "--spool", spool, "--correlation-id", f"corr-{i}")
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    files = [spool / "events" / "pending" / f"{eid}.json" for eid in ids]
    raw = [f.read_bytes() for f in files]
    originals = [json.loads(b) for b in raw]
    bfile = tmp_path / "events.jsonl"
    bfile.write_bytes(b"".join(b if b.endswith(b"\n") else b + b"\n" for b in raw))
    for f in files:
        f.unlink()
    assert pending(spool) == []
    r = run_cli("emit", "--batch", bfile, "--spool", spool)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ids
    for f, orig in zip(files, originals, strict=True):
        again = read_event(f)
        assert again == orig
        verify_checksum(again)
    assert tmp_files(spool) == []


def test_emit_batch_refuses_tampered_checksum(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """A batch line with a changed payload but old checksum is refused (65, checksum mismatch)."""
    router = EventRouter(spool=spool)
    good, _ = router.build("drift.detected", drift(samples, execution_id="t-0"))
    bad, _ = router.build("drift.detected", drift(samples, execution_id="t-1"))
    tampered = json.loads(bad.to_json())
    tampered["payload"]["drift_score"] = 0.01
    bfile = tmp_path / "t.jsonl"
    bfile.write_bytes(good.to_json() + b"\n" + json.dumps(tampered).encode() + b"\n")
    r = run_cli("emit", "--batch", bfile, "--spool", spool)
    assert r.returncode == EX_DATAERR
    assert "checksum mismatch" in r.stderr
    assert f"{bfile}:2" in r.stderr
    assert_nothing_written(spool)


def test_emit_batch_fills_in_partial_envelopes(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """Envelope lines without checksum (type, payload, correlation_id) are completed and sealed."""
    lines = [
        json.dumps({"type": "drift.detected", "payload": drift(samples), "correlation_id": "c-1"}),
        json.dumps(
            {
                "type": "system.health",
                "payload": samples["system.health"]["valid"][0],
                "correlation_id": "c-2",
            }
        ),
    ]
    bfile = tmp_path / "partial.jsonl"
    bfile.write_text("\n".join(lines) + "\n")
    r = run_cli("emit", "--batch", bfile, "--spool", spool)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.splitlines()
    assert len(ids) == 2
    evs = [read_event(spool / "events" / "pending" / f"{eid}.json") for eid in ids]
    assert [e["correlation_id"] for e in evs] == ["c-1", "c-2"]
    assert [e["topic"] for e in evs] == [
        "poet/functions/detect_drift/execution",
        "poet/system/health",
    ]
    for e, eid in zip(evs, ids, strict=True):
        assert e["id"] == eid
        assert e["source"]
        assert isinstance(e["timestamp"], float | int) and e["timestamp"] > 0
        assert set(e["metadata"]) >= {"version", "environment", "service"}
        verify_checksum(e)


# -- I/O errors --------------------------------------------------------------------


def test_emit_into_broken_spool_exits_74(run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]) -> None:
    """When events/tmp is a regular file the emit fails with 74 and nothing becomes visible."""
    tmpdir = spool / "events" / "tmp"
    tmpdir.rmdir()
    tmpdir.write_bytes(b"not a directory")
    pfile = write_json(tmp_path / "p.json", drift(samples))
    r = run_cli("emit", "drift.detected", pfile, "--spool", spool)
    assert r.returncode == EX_IOERR, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert str(tmpdir) in r.stderr or "events/tmp" in r.stderr
    assert pending(spool) == []
    assert tmpdir.read_bytes() == b"not a directory"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_emit_batch_into_full_filesystem_leaves_nothing(run_cli: Any, tmp_path: Path, samples: dict[str, Any]) -> None:
    """A batch running out of space (64k tmpfs) exits 74: no partial group, no tmp leftovers."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {m.stderr.decode().strip()}")
    try:
        sp = mnt / "spool"
        r0 = run_cli("init", "--spool", sp)
        assert r0.returncode == 0, r0.stderr
        bfile = tmp_path / "big.jsonl"
        bfile.write_bytes(b"\n".join(_batch_lines(samples, 500)) + b"\n")
        r = run_cli("emit", "--batch", bfile, "--type", "drift.detected", "--spool", sp)
        assert r.returncode == EX_IOERR, (r.stdout, r.stderr)
        assert r.stdout == ""
        assert "Traceback" not in r.stderr
        assert pending(sp) == []
        assert tmp_files(sp) == []
        assert all_event_files(sp) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch-of-20"])
def test_emit_past_file_size_limit_exits_74(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any], batch: bool
) -> None:
    """With RLIMIT_FSIZE=300 writing an event fails (EFBIG): exit 74, nothing in pending/, tmp/."""
    if batch:
        bfile = tmp_path / "b.jsonl"
        bfile.write_bytes(b"\n".join(_batch_lines(samples, 20)) + b"\n")
        args: list[Any] = ["emit", "--batch", bfile, "--type", "drift.detected"]
    else:
        args = ["emit", "drift.detected", write_json(tmp_path / "p.json", drift(samples))]
    r = run_cli(*args, "--spool", spool, preexec_fn=_limit_file_size)
    assert r.returncode == EX_IOERR, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert_nothing_written(spool)


# -- modes and symlinks -------------------------------------------------------------


def test_init_and_emit_modes_ignore_umask_0(run_cli: Any, tmp_path: Path, samples: dict[str, Any]) -> None:
    """Under umask 0, spool directories are 0750 or tighter and event files 0640 or tighter."""
    sp = tmp_path / "modes"
    umask0 = lambda: os.umask(0)  # noqa: E731
    r = run_cli("init", "--spool", sp, preexec_fn=umask0)
    assert r.returncode == 0, r.stderr
    pfile = write_json(tmp_path / "p.json", drift(samples))
    for extra in ([], ["--id", "keyed-1"]):
        r = run_cli("emit", "drift.detected", pfile, "--spool", sp, *extra, preexec_fn=umask0)
        assert r.returncode == 0, r.stderr
    bfile = tmp_path / "b.jsonl"
    bfile.write_bytes(b"\n".join(_batch_lines(samples, 10)) + b"\n")
    r = run_cli("emit", "--batch", bfile, "--type", "drift.detected", "--spool", sp, preexec_fn=umask0)
    assert r.returncode == 0, r.stderr
    dirs, files = [sp], []
    for dirpath, dirnames, filenames in os.walk(sp):
        dirs += [Path(dirpath) / d for d in dirnames]
        files += [Path(dirpath) / f for f in filenames]
    assert len(dirs) >= 13
    assert len([f for f in files if f.parent.name == "pending"]) == 12
    loose_dirs = [(str(d), oct(stat.S_IMODE(d.stat().st_mode))) for d in dirs if d.stat().st_mode & 0o027]
    loose_files = [(str(f), oct(stat.S_IMODE(f.lstat().st_mode))) for f in files if f.lstat().st_mode & 0o137]
    assert loose_dirs == []
    assert loose_files == []


def test_emit_does_not_follow_symlink_at_event_path(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """If pending/<id>.json is a symlink to a file outside the spool, emitting the id is a no-op."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    link = spool / "events" / "pending" / "sym-1.json"
    link.symlink_to(outside)
    pfile = write_json(tmp_path / "p.json", drift(samples))
    r = run_cli("emit", "drift.detected", pfile, "--id", "sym-1", "--spool", spool)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "sym-1\n"
    assert outside.read_bytes() == b"precious"
    assert link.is_symlink()
    assert link.readlink() == outside
    assert tmp_files(spool) == []


def test_emit_does_not_create_through_dangling_symlink(
    run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]
) -> None:
    """A dangling symlink at pending/<id>.json is not followed: its target is never created."""
    outside = tmp_path / "outside-new"
    link = spool / "events" / "pending" / "sym-2.json"
    link.symlink_to(outside)
    pfile = write_json(tmp_path / "p.json", drift(samples))
    r = run_cli("emit", "drift.detected", pfile, "--id", "sym-2", "--spool", spool)
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(outside)
    assert link.is_symlink()
    assert tmp_files(spool) == []


# -- validate -----------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[str(Path(dirpath) / n)] = b"<dir>"
        for n in filenames:
            p = Path(dirpath) / n
            out[str(p)] = p.read_bytes()
    return out


def test_validate(run_cli: Any, spool: Path, tmp_path: Path, samples: dict[str, Any]) -> None:
    """`validate`: valid event 0, a bad line 65, --type payloads, missing 66; writes nothing."""
    router = EventRouter(spool=spool)
    eid = router.emit("drift.detected", drift(samples))
    event_file = spool / "events" / "pending" / f"{eid}.json"
    env = {"POET_SPOOL": str(spool)}
    before = _snapshot(spool)

    r = run_cli("validate", event_file, env=env)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["valid"] is True and rows[0]["type"] == "drift.detected"

    good, _ = router.build("system.health", samples["system.health"]["valid"][0])
    bad = json.loads(good.to_json())
    bad["payload"]["status"] = "on-fire"
    two = tmp_path / "two.jsonl"
    two.write_bytes(good.to_json() + b"\n" + json.dumps(bad).encode() + b"\n")
    r = run_cli("validate", two, env=env)
    assert r.returncode == EX_DATAERR
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [row["valid"] for row in rows] == [True, False]
    assert rows[1]["file"] == f"{two}:2"
    assert f"{two}:2" in r.stderr

    bare = write_json(tmp_path / "bare.json", drift(samples))
    r = run_cli("validate", "--type", "drift.detected", bare, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["valid"] is True
    r = run_cli("validate", bare, env=env)  # a bare payload is not an envelope
    assert r.returncode == EX_DATAERR

    r = run_cli("validate", tmp_path / "missing.json", env=env)
    assert r.returncode == EX_NOINPUT
    assert "missing.json" in r.stderr

    assert _snapshot(spool) == before
    assert not (tmp_path / ".poet").exists()


# -- init and config ----------------------------------------------------------------


def test_init_is_idempotent(run_cli: Any, tmp_path: Path) -> None:
    """`poetctl init` twice exits 0 both times and leaves the full tree."""
    sp = tmp_path / "fresh"
    for _ in range(2):
        r = run_cli("init", "--spool", sp)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(sp.resolve())
    for sub in (
        "events/tmp",
        "events/pending",
        "events/inflight",
        "events/processed",
        "events/dead",
        "events/corrupt",
        "state",
        "feedback/pending",
        "feedback/processed",
        "run",
    ):
        assert (sp / sub).is_dir(), sub


def test_init_default_location_creates_parents(run_cli: Any, tmp_path: Path) -> None:
    """`poetctl init` with no spool configured creates ./.poet/pubsub, parents included."""
    r = run_cli("init")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / ".poet" / "pubsub" / "events" / "pending").is_dir()


def test_init_refuses_file_in_the_way(run_cli: Any, tmp_path: Path) -> None:
    """`poetctl init` on a path that is a regular file exits 74 and names it."""
    sp = tmp_path / "afile"
    sp.write_bytes(b"x")
    r = run_cli("init", "--spool", sp)
    assert r.returncode == EX_IOERR
    assert str(sp) in r.stderr
    assert sp.read_bytes() == b"x"


def test_config_show_spool_and_secrets(run_cli: Any, tmp_path: Path) -> None:
    """`config show` reports POET_SPOOL as storage_path and never prints a secret's value."""
    (tmp_path / "poet.toml").write_text(
        '[external_integrations.pagerduty]\napi_key = "env:PD_KEY"\n'
        '[external_integrations.custom]\ntoken = "literal-secret"\n'
    )
    sp = tmp_path / "configured"
    r = run_cli("config", "show", env={"POET_SPOOL": str(sp), "PD_KEY": "supersecret"})
    assert r.returncode == 0, r.stderr
    assert "supersecret" not in r.stdout + r.stderr
    assert "literal-secret" not in r.stdout + r.stderr
    shown = json.loads(r.stdout)
    assert shown["storage_path"] == str(sp)
    assert "env:PD_KEY" in shown["external_integrations"]["pagerduty"]["api_key"]
    assert "redacted" in shown["external_integrations"]["custom"]["token"]


def test_config_show_redacts_literal_api_key(run_cli: Any, tmp_path: Path) -> None:
    """A literal api_key in poet.toml is printed redacted."""
    (tmp_path / "poet.toml").write_text('[external_integrations.pagerduty]\napi_key = "literal-secret"\n')
    r = run_cli("config", "show")
    assert r.returncode == 0, r.stderr
    assert "literal-secret" not in r.stdout
    shown = json.loads(r.stdout)
    assert "redacted" in shown["external_integrations"]["pagerduty"]["api_key"]
    assert shown["config_file"] == "poet.toml"


# -- library --------------------------------------------------------------------------


def test_emit_many_commits_all(router: EventRouter, spool: Path, samples: dict[str, Any]) -> None:
    """EventRouter.emit_many returns one id per item and writes every event."""
    ids = router.emit_many(
        [
            ("drift.detected", drift(samples)),
            ("system.health", samples["system.health"]["valid"][0]),
        ]
    )
    assert len(ids) == 2
    assert len(set(ids)) == 2
    evs = [read_event(spool / "events" / "pending" / f"{eid}.json") for eid in ids]
    assert [e["type"] for e in evs] == ["drift.detected", "system.health"]
    for e in evs:
        verify_checksum(e)
    assert len(pending(spool)) == 2


@pytest.mark.parametrize("bad_at", [0, 1, 2])
def test_emit_many_with_an_invalid_item_writes_nothing(
    router: EventRouter, spool: Path, samples: dict[str, Any], bad_at: int
) -> None:
    """If any item of emit_many is invalid, InvalidData is raised and nothing is written."""
    items: list[Any] = [
        ("drift.detected", drift(samples)),
        ("system.health", samples["system.health"]["valid"][0]),
        ("system.metrics", samples["system.metrics"]["valid"][0]),
    ]
    items[bad_at] = (items[bad_at][0], {"not": "valid"})
    with pytest.raises(InvalidData) as info:
        router.emit_many(items)
    assert f"item {bad_at + 1}" in str(info.value)
    assert pending(spool) == []
    assert tmp_files(spool) == []
