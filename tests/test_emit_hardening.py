"""`poetctl emit` hardening (issue 9): bounded input, no spool creation, inline JSON, id conflicts, killed batches."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import CLI_TIMEOUT, all_event_files, clean_env, cli_argv, files_in

from poetctl import EventRouter
from poetctl.errors import InputMissing, InvalidData
from poetctl.event import verify_checksum
from poetctl.router import Quarantined

EX_DATAERR, EX_NOINPUT = 65, 66
MIB = 1024 * 1024
# Far above what emit needs (~30 MB resident, well under this much address space), far below
# what reading /dev/zero whole would take: past it the process dies instead of the machine swapping.
ADDRESS_SPACE = 768 * MIB


def pending(spool: Path) -> list[Path]:
    return files_in(spool / "events" / "pending")


def health(n: int = 0) -> dict[str, Any]:
    return {"service": f"svc-{n}", "status": "healthy"}


def execution(n: int, **changes: Any) -> dict[str, Any]:
    p = {
        "function_name": "detect_drift",
        "version": "v1",
        "execution_id": f"exec-{n}",
        "start_time": 1749800000.125,
        "end_time": 1749800001.5,
        "status": "success",
        "metrics": {"duration_ms": 1375.0, "memory_mb": 212.4, "cpu_percent": 37.5},
    }
    p.update(changes)
    return p


def jsonl(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


class Bounded:
    """A CLI run under an address-space limit: reading an endless input whole would die of MemoryError."""

    def __init__(self, args: list[str | os.PathLike[str]], cwd: Path, stdin: Any = None, env: Any = None) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

        p = subprocess.Popen(
            cli_argv(*args),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(env),
            cwd=cwd,
            preexec_fn=limit,
        )
        self.stdout, err = p.communicate(timeout=CLI_TIMEOUT)
        self.stderr = err.decode(errors="replace")
        self.returncode = p.returncode


# -- 1. input is read under the event size limit --------------------------------------------


@pytest.mark.parametrize(
    ("args", "from_stdin", "where"),
    [
        (["emit", "--batch", "/dev/zero"], False, "/dev/zero:1: line is longer than the limit of 1048576 bytes"),
        (["emit", "--batch", "-"], True, "<stdin>:1: line is longer than the limit of 1048576 bytes"),
        (["emit", "--batch", "/dev/zero", "--type", "system.health"], False, "/dev/zero:1: line is longer"),
        (["emit", "system.health", "/dev/zero"], False, "/dev/zero: input is larger than 1048576 bytes"),
        (["emit", "system.health", "-"], True, "<stdin>: input is larger than 1048576 bytes"),
        (["emit", "system.health"], True, "<stdin>: input is larger than 1048576 bytes"),
        (["validate", "/dev/zero"], False, "/dev/zero:1: line is longer than the limit of 1048576 bytes"),
        (["validate", "-"], True, "<stdin>:1: line is longer than the limit of 1048576 bytes"),
    ],
)
def test_endless_input_is_refused_at_the_size_limit(
    spool: Path, tmp_path: Path, args: list[str], from_stdin: bool, where: str
) -> None:
    """An endless input (/dev/zero, as a file or on stdin) exits 65 naming the real limit, in bounded memory."""
    with open("/dev/zero", "rb") as zero:
        r = Bounded([*args, *(["--spool", spool] if args[0] == "emit" else [])], tmp_path, zero if from_stdin else None)
    assert r.returncode == EX_DATAERR, r.stderr
    assert where in r.stderr and "(max_event_bytes)" in r.stderr
    assert "67108864" not in r.stderr  # validate named 64 x the limit
    assert len(r.stderr.splitlines()) == 1
    assert all_event_files(spool) == []


def test_over_long_line_in_a_batch_stops_it_and_names_the_configured_limit(
    spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """A batch line past max_event_bytes (here 4096) is refused naming FILE:LINE and 4096; nothing is written."""
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        json.dumps(health(1))
        + "\n"
        + json.dumps({"service": "x" * 5000, "status": "healthy"})
        + "\n"
        + json.dumps(health(3))
        + "\n"
    )
    env = {"POET_MAX_EVENT_BYTES": "4096"}
    r = run_cli("emit", "--batch", batch, "--type", "system.health", "--spool", spool, env=env)
    assert r.returncode == EX_DATAERR, r.stderr
    assert f"{batch}:2: line is longer than the limit of 4096 bytes" in r.stderr
    assert r.stdout == "" and all_event_files(spool) == []
    v = run_cli("validate", batch, "--type", "system.health", env=env)
    assert v.returncode == EX_DATAERR and "limit of 4096 bytes" in v.stderr


def test_batch_lines_split_across_read_chunks_are_whole(spool: Path, tmp_path: Path, run_cli: Any) -> None:
    """Lines longer than a read chunk (64 KiB) and CRLF endings are read intact."""
    objs = [{"service": "s" * (70_000 + i), "status": "healthy"} for i in range(3)]
    batch = tmp_path / "b.jsonl"
    batch.write_bytes(b"".join(json.dumps(o).encode() + b"\r\n" for o in objs))
    r = run_cli("emit", "--batch", batch, "--type", "system.health", "--spool", spool)
    assert r.returncode == 0, r.stderr
    stored = sorted(len(json.loads(p.read_bytes())["payload"]["service"]) for p in pending(spool))
    assert stored == [70_000, 70_001, 70_002]


# -- 2. only init (or emit --init) creates a spool ----------------------------------------------


@pytest.mark.parametrize("how", ["single", "batch", "fast-path-off"])
def test_emit_into_a_missing_spool_exits_66_and_creates_nothing(tmp_path: Path, run_cli: Any, how: str) -> None:
    """A mistyped --spool is refused like every other command's, and no directory is created."""
    missing = tmp_path / "typo" / "spool"
    b = jsonl(tmp_path / "b.jsonl", [health()])
    args: list[Any] = {
        "single": ["emit", "system.health", json.dumps(health()), "--spool", missing],
        "batch": ["emit", "--batch", b, "--type", "system.health", "--spool", missing],
        "fast-path-off": ["emit", "system.health", json.dumps(health()), "--spool", missing],
    }[how]
    env = {"POETCTL_NO_FASTPATH": "1"} if how == "fast-path-off" else None
    r = run_cli(*args, env=env)
    assert r.returncode == EX_NOINPUT, r.stderr
    assert r.stderr.startswith(f"poetctl: error: no spool at {missing}") and "poetctl init" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "typo").exists()


def test_emit_into_an_empty_directory_is_refused(tmp_path: Path, run_cli: Any) -> None:
    """An existing directory that is not a spool is not turned into one."""
    d = tmp_path / "notaspool"
    d.mkdir()
    r = run_cli("emit", "system.health", json.dumps(health()), "--spool", d)
    assert r.returncode == EX_NOINPUT and "no spool at" in r.stderr
    assert list(d.iterdir()) == []


@pytest.mark.parametrize("batch", [False, True])
def test_emit_init_creates_the_spool(tmp_path: Path, run_cli: Any, batch: bool) -> None:
    """`emit --init` creates a missing spool and commits the event."""
    sp = tmp_path / "new"
    b = jsonl(tmp_path / "b.jsonl", [health()])
    args: list[Any] = ["--batch", b, "--type", "system.health"] if batch else ["system.health", json.dumps(health())]
    r = run_cli("emit", "--init", *args, "--spool", sp)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in pending(sp)] == [r.stdout.strip() + ".json"]


def test_library_router_still_creates_its_spool(tmp_path: Path) -> None:
    """EventRouter(spool=...) keeps the seed's behaviour (creates the tree); create_spool=False refuses."""
    sp = tmp_path / "lib"
    with pytest.raises(InputMissing, match="no spool at"):
        EventRouter(spool=sp, create_spool=False).emit("system.health", health())
    assert not sp.exists()
    eid = EventRouter(spool=sp).emit("system.health", health())
    assert (sp / "events" / "pending" / f"{eid}.json").is_file()


# -- 3. inline JSON payloads --------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"service":"a","status":"healthy"}', '  \n\t{"service": "a", "status": "healthy"}'])
def test_inline_json_payload(spool: Path, run_cli: Any, text: str) -> None:
    """A PAYLOAD argument starting with '{' (after whitespace) is the JSON object itself."""
    r = run_cli("emit", "system.health", text, "--spool", spool)
    assert r.returncode == 0, r.stderr
    (f,) = pending(spool)
    assert json.loads(f.read_bytes())["payload"] == {"service": "a", "status": "healthy"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"service": ', "<argument>: invalid JSON"),
        ('{"service": "a"}', "<argument>: system.health payload does not match"),
        ('{"service": "' + "x" * 5000 + '", "status": "healthy"}', "<argument>: input is larger than 4096 bytes"),
    ],
)
def test_bad_inline_json_is_refused_naming_the_argument(spool: Path, run_cli: Any, text: str, message: str) -> None:
    """Invalid, schema-violating or oversize inline JSON exits 65 naming <argument>; nothing is written."""
    r = run_cli("emit", "system.health", text, "--spool", spool, env={"POET_MAX_EVENT_BYTES": "4096"})
    assert r.returncode == EX_DATAERR and message in r.stderr
    assert all_event_files(spool) == []


def test_a_file_whose_name_starts_with_a_brace_is_reached_with_dot_slash(
    spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """`./{name}` still names a file; the help text documents inline JSON."""
    (tmp_path / "{odd}.json").write_text(json.dumps(health()))
    r = run_cli("emit", "system.health", "./{odd}.json", "--spool", spool)
    assert r.returncode == 0, r.stderr
    h = run_cli("emit", "--help", env={"COLUMNS": "200"})
    assert "inline JSON object" in h.stdout and "--id-from" in h.stdout and "--init" in h.stdout


# -- 4. one id, one event, in a batch ---------------------------------------------------------


@pytest.mark.parametrize("form", ["envelopes", "id-from"])
def test_batch_line_reusing_an_id_for_other_content_is_refused(
    spool: Path, tmp_path: Path, run_cli: Any, form: str
) -> None:
    """A later line with an earlier line's id and different content exits 65 naming both lines; nothing is written."""
    if form == "envelopes":
        lines = [
            {"type": "system.health", "id": "k-1", "payload": health(1)},
            {"type": "system.health", "id": "k-2", "payload": health(2)},
            {"type": "system.health", "id": "k-1", "payload": health(3)},
        ]
        args: list[Any] = []
    else:
        lines = [execution(1), execution(2), execution(1, status="failure")]
        args = ["--type", "function.execution", "--id-from", "execution_id"]
    b = jsonl(tmp_path / "b.jsonl", lines)
    r = run_cli("emit", "--batch", b, *args, "--spool", spool)
    assert r.returncode == EX_DATAERR, r.stderr
    assert f"{b}:3: id " in r.stderr and f"already used by {b}:1 for different content" in r.stderr
    assert r.stdout == "" and all_event_files(spool) == []
    # --skip-invalid commits the first use and reports the conflicting line.
    r = run_cli("emit", "--batch", b, *args, "--skip-invalid", "--spool", spool)
    assert r.returncode == EX_DATAERR and f"{b}:3:" in r.stderr
    assert len(pending(spool)) == 2


def test_batch_line_repeating_an_identical_event_is_one_event(spool: Path, tmp_path: Path, run_cli: Any) -> None:
    """The same id with the same content twice is an idempotent no-op: one file, the id printed per line."""
    line = {"type": "system.health", "id": "k-1", "payload": health(1)}
    b = jsonl(tmp_path / "b.jsonl", [line, {**line, "payload": dict(reversed(health(1).items()))}])
    r = run_cli("emit", "--batch", b, "--spool", spool)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["k-1", "k-1"]
    assert [p.name for p in pending(spool)] == ["k-1.json"]


def test_emit_many_refuses_one_id_for_two_contents(router: EventRouter, spool: Path) -> None:
    """The library's emit_many names both items; identical duplicates stay one event."""
    a = {"type": "system.health", "id": "k-1", "payload": health(1)}
    with pytest.raises(InvalidData, match=r"item 2: id 'k-1' was already used by item 1"):
        router.emit_many([a, {**a, "payload": health(2)}])
    assert all_event_files(spool) == []
    assert router.emit_many([a, dict(a)]) == ["k-1", "k-1"]
    assert len(pending(spool)) == 1


def test_id_from_gives_the_same_id_on_every_run_and_separates_types(spool: Path, tmp_path: Path, run_cli: Any) -> None:
    """--id-from derives one stable id per (type, field value); a missing field is a 65 naming the line."""
    b = jsonl(tmp_path / "b.jsonl", [execution(1), execution(2)])
    args = ["emit", "--batch", b, "--type", "function.execution", "--id-from", "execution_id", "--spool", spool]
    first, again = run_cli(*args), run_cli(*args)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout and len(set(first.stdout.split())) == 2
    assert all(i.startswith("function.execution:") for i in first.stdout.split())
    assert len(pending(spool)) == 2
    single = run_cli(
        "emit", "function.execution", json.dumps(execution(1)), "--id-from", "execution_id", "--spool", spool
    )
    assert single.stdout.strip() == first.stdout.split()[0] and len(pending(spool)) == 2
    # Envelope lines: one execution_id under two types gives two ids; a line with its own id keeps it.
    feedback = {"function_name": "detect_drift", "version": "v1", "execution_id": "exec-1", "feedback_type": "user"}
    env = jsonl(
        tmp_path / "env.jsonl",
        [
            {"type": "function.execution", "payload": execution(1)},
            {"type": "function.feedback", "payload": feedback},
            {"type": "function.feedback", "id": "own-id", "payload": {**feedback, "execution_id": "exec-2"}},
        ],
    )
    r = run_cli("emit", "--batch", env, "--id-from", "execution_id", "--spool", spool)
    assert r.returncode == 0, r.stderr
    exec_id, feedback_id, own = r.stdout.split()
    assert exec_id == first.stdout.split()[0] and feedback_id.startswith("function.feedback:") and own == "own-id"
    assert len(pending(spool)) == 4
    bad = jsonl(tmp_path / "bad.jsonl", [execution(3), {**execution(4), "execution_id": 7.5}])
    r = run_cli("emit", "--batch", bad, "--type", "function.execution", "--id-from", "execution_id", "--spool", spool)
    assert r.returncode == EX_DATAERR and f"{bad}:2: $.payload.execution_id: --id-from needs" in r.stderr
    assert len(pending(spool)) == 4


# -- 5. ids of quarantined and dead-lettered events ----------------------------------------------


def quarantine_by_daemon(spool: Path, tmp_path: Path, run_cli: Any, event_id: str) -> None:
    """Put a broken pending/<id>.json through a real `daemon --once`, which quarantines it."""
    (spool / "events" / "pending" / f"{event_id}.json").write_text('{"id": "broken')
    run_cli("daemon", "--once", "--no-builtin-handlers", "--spool", spool)
    assert (spool / "events" / "corrupt" / f"{event_id}.json").exists()
    assert pending(spool) == []


@pytest.mark.parametrize("how", ["single", "batch", "fast-path-off"])
def test_emitting_a_quarantined_id_exits_65(spool: Path, tmp_path: Path, run_cli: Any, how: str) -> None:
    """An --id (or batch id) that exists in corrupt/ is refused with the quarantine reason, not silently dropped."""
    quarantine_by_daemon(spool, tmp_path, run_cli, "order-7")
    b = jsonl(tmp_path / "b.jsonl", [{"type": "system.health", "id": "order-7", "payload": health()}])
    args: list[Any] = (
        ["emit", "--batch", b, "--spool", spool]
        if how == "batch"
        else ["emit", "system.health", json.dumps(health()), "--id", "order-7", "--spool", spool]
    )
    r = run_cli(*args, env={"POETCTL_NO_FASTPATH": "1"} if how == "fast-path-off" else None)
    assert r.returncode == EX_DATAERR, r.stderr
    assert "id order-7 exists in corrupt/ (quarantined: bad_json" in r.stderr
    assert (f"{b}:1:" in r.stderr) == (how == "batch")
    assert r.stdout == "" and pending(spool) == []
    # The command the message suggests works as written.
    hint = re.search(r"'(poetctl corrupt show [^']+)'", r.stderr)
    assert hint is not None, r.stderr
    shown = run_cli(*hint.group(1).split()[1:], "--spool", spool)
    assert shown.returncode == 0 and "bad_json" in shown.stdout, shown.stderr


def test_library_emit_of_a_quarantined_id_raises(spool: Path, tmp_path: Path, run_cli: Any) -> None:
    """EventRouter.emit raises Quarantined (an InvalidData, 65) and writes nothing."""
    quarantine_by_daemon(spool, tmp_path, run_cli, "order-8")
    with pytest.raises(Quarantined, match=r"order-8 exists in corrupt/ \(quarantined: bad_json"):
        EventRouter(spool=spool).emit("system.health", health(), id="order-8")
    assert pending(spool) == []


def test_emitting_a_dead_lettered_id_is_a_noop_with_a_note(spool: Path, tmp_path: Path, run_cli: Any) -> None:
    """An id in dead/ is an existing event: exit 0, the id printed, nothing written, a note on stderr."""
    eid = EventRouter(spool=spool).emit("system.health", health(), id="job-9")
    os.rename(spool / "events" / "pending" / f"{eid}.json", spool / "events" / "dead" / f"{eid}.json")
    r = run_cli("emit", "system.health", json.dumps(health(2)), "--id", "job-9", "--spool", spool)
    assert r.returncode == 0 and r.stdout == "job-9\n"
    assert "note: id job-9 exists in dead/" in r.stderr and "dead show job-9" in r.stderr
    assert pending(spool) == []
    # A re-emit of a processed id stays silent.
    os.rename(spool / "events" / "dead" / "job-9.json", spool / "events" / "processed" / "job-9.json")
    r = run_cli("emit", "system.health", json.dumps(health(2)), "--id", "job-9", "--spool", spool)
    assert r.returncode == 0 and r.stderr == "" and pending(spool) == []


def test_emit_many_inside_a_handler_buffers_its_follow_ups(router: EventRouter, spool: Path) -> None:
    """emit_many in a handler is buffered like emit (committed only if the handler succeeds)."""
    cause, _ = router.build("system.health", health())
    buffer: list[Any] = []
    router.set_cause(cause, "h", buffer)
    try:
        ids = router.emit_many([("system.health", health(1)), ("system.health", health(2))])
    finally:
        router.set_cause(None)
    assert [ev.id for ev, _ in buffer] == ids and all(ev.causation_id == cause.id for ev, _ in buffer)
    assert pending(spool) == []


# -- 6. a killed batch, and resuming it ------------------------------------------------------


class Reader:
    """Drains a pipe on a thread (the writer never blocks on it) and signals the first complete line."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.data = bytearray()
        self.first_line = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe: IO[bytes]) -> None:
        while chunk := pipe.read1(1 << 16):
            self.data += chunk
            if b"\n" in chunk:
                self.first_line.set()
        self.first_line.set()  # EOF: wake the waiter either way

    def lines(self) -> list[str]:
        """Complete lines only: a process killed mid-write may leave a partial last one."""
        self.thread.join(CLI_TIMEOUT)
        text = bytes(self.data).decode()
        return text.split("\n")[:-1]


def test_killed_batch_leaves_printed_ids_committed_and_a_rerun_completes_it(
    spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """SIGKILL after the first group's ids: printed ids are in pending/, all visible files whole, a re-run completes."""
    n = 2 * 5000  # two groups: the kill lands in the second
    for _ in range(4):
        batch = jsonl(tmp_path / f"runs-{n}.jsonl", [execution(i) for i in range(n)])
        args = ["emit", "--batch", batch, "--type", "function.execution", "--id-from", "execution_id", "--spool", spool]
        proc = subprocess.Popen(
            cli_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), cwd=tmp_path
        )
        assert proc.stdout is not None
        out = Reader(proc.stdout)
        out.first_line.wait(CLI_TIMEOUT)  # the first group is durable and being printed
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=CLI_TIMEOUT)
        printed = out.lines()
        committed = {p.name[:-5] for p in pending(spool)}
        assert printed, "no id was printed before the kill"
        if proc.returncode == -signal.SIGKILL and len(committed) < n:
            break  # the kill interrupted work: this is the case under test
        # The batch finished before the kill landed: start over with a bigger one.
        for p in pending(spool):
            p.unlink()
        n *= 2
    else:
        pytest.fail("the batch always finished before SIGKILL; cannot test an interrupted batch here")
    assert set(printed) <= committed
    for p in pending(spool):  # every visible file is a whole, sealed event
        verify_checksum(json.loads(p.read_bytes()), str(p))
    # Re-running the same batch commits exactly what is missing.
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(ids) == n and set(ids) == {p.name[:-5] for p in pending(spool)}
    seen = [json.loads(p.read_bytes())["payload"]["execution_id"] for p in pending(spool)]
    assert len(seen) == len(set(seen)) == n
