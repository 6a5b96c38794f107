"""User schemas cannot make poetctl fetch, read or spin: references outside the schema file are
refused (nothing is fetched: a counting HTTP server and a counting FIFO prove it), and user
patterns run on a linear-time regex engine, for verdicts and for error messages alike."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import files_in

from poetctl import EventRouter, load_config
from poetctl.errors import InvalidData

EX_DATAERR = 65
DRAFT = "https://json-schema.org/draft/2020-12/schema"


class Server:
    """An HTTP server on 127.0.0.1 that counts every connection (HTTP or TLS) it accepts."""

    def __init__(self) -> None:
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"type": "integer"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/schema+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Counting(http.server.ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                counter.connections += 1
                return True

        self.connections = 0
        self.httpd = Counting(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    def probe(self) -> None:
        """Connect once ourselves, to prove the counter works (then subtract it)."""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"GET /probe HTTP/1.0\r\n\r\n")
            s.recv(1024)


class Fifo:
    """A named pipe outside the schema dirs that counts how often it is opened for reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.opens = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the pipe
            if self.stopping:
                os.close(fd)
                return
            self.opens += 1
            try:
                os.write(fd, b'{"type": "integer"}')
            except BrokenPipeError:
                pass
            os.close(fd)

    def stop(self) -> None:
        self.stopping = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases the blocked writer
        self.thread.join(timeout=30)
        os.close(fd)


@pytest.fixture
def server() -> Iterator[Server]:
    """A counting HTTP server on 127.0.0.1, shut down after the test."""
    s = Server()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    """A counting named pipe in tmp_path/outside (not a schema dir)."""
    (tmp_path / "outside").mkdir()
    f = Fifo(tmp_path / "outside" / "secret.json")
    try:
        yield f
    finally:
        f.stop()


def _with_ref(ref: str) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "type": "object",
        "properties": {"n": {"$ref": ref}},
    }


# Schemas that must be refused: name -> builder(server, fifo) -> (schema, the offending reference).
Builder = Callable[[Server, Fifo], tuple[dict[str, Any], str]]
REFUSED: dict[str, Builder] = {
    "http": lambda s, f: (_with_ref(s.url("s.json")), s.url("s.json")),
    "https": lambda s, f: (_with_ref(s.url("s.json", "https")), s.url("s.json", "https")),
    "file": lambda s, f: (_with_ref(f.path.as_uri()), f.path.as_uri()),
    "file-fragment": lambda s, f: (_with_ref(f.path.as_uri() + "#/x"), f.path.as_uri() + "#/x"),
    "relative-name": lambda s, f: (_with_ref("custom.other.json"), "custom.other.json"),
    "relative-to-http-id": lambda s, f: (
        {**_with_ref("defs.json"), "$id": s.url("base/custom.thing.json")},
        "defs.json",
    ),
    "nested-in-defs": lambda s, f: (
        {
            "$schema": DRAFT,
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/list"}},
            "$defs": {"list": {"type": "array", "items": {"allOf": [{"$ref": s.url("item.json")}]}}},
        },
        s.url("item.json"),
    ),
    "dynamic-ref": lambda s, f: (
        {"$schema": DRAFT, "type": "object", "properties": {"n": {"$dynamicRef": s.url("d.json#x")}}},
        s.url("d.json#x"),
    ),
    "meta-schema": lambda s, f: ({"$schema": s.url("meta.json"), "type": "object"}, s.url("meta.json")),
}


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """tmp_path/schemas: a user schema directory, with a harmless neighbour schema."""
    d = tmp_path / "schemas"
    d.mkdir()
    (d / "custom.other.json").write_text(json.dumps({"$schema": DRAFT, "type": "integer"}))
    return d


def _assert_refused(stderr: str, schema_file: Path, ref: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert str(schema_file) in lines[0], stderr
    assert repr(ref) in lines[0], stderr
    assert "never fetch" in lines[0], stderr


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_outside_reference_is_refused_and_never_fetched(
    case: str, server: Server, fifo: Fifo, user_dir: Path, spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """emit, validate and the library refuse a schema referring outside itself (65, one line); nothing is fetched."""
    schema, ref = REFUSED[case](server, fifo)
    schema_file = user_dir / "custom.thing.json"
    schema_file.write_text(json.dumps(schema))
    (tmp_path / "p.json").write_text(json.dumps({"n": 1}))
    env = {"POET_SCHEMA_PATH": str(user_dir)}

    r = run_cli("--spool", spool, "emit", "custom.thing", tmp_path / "p.json", env=env)
    assert r.returncode == EX_DATAERR, r.stderr
    _assert_refused(r.stderr, schema_file, ref)
    assert files_in(spool / "events" / "pending") == []

    r = run_cli("validate", "--type", "custom.thing", tmp_path / "p.json", env=env)
    assert r.returncode == EX_DATAERR, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and repr(ref) in r.stdout + r.stderr

    router = EventRouter(config=load_config(spool=spool, env=env))
    with pytest.raises(InvalidData) as info:
        router.emit("custom.thing", {"n": 1})
    assert repr(ref) in str(info.value)

    assert server.connections == 0
    assert fifo.opens == 0
    server.probe()  # the counters do count
    assert server.connections == 1


def test_daemon_never_fetches_for_an_event_whose_schema_turned_bad(
    server: Server, fifo: Fifo, user_dir: Path, spool: Path, run_cli: Any
) -> None:
    """An event whose schema turned to refer outside is quarantined (bad_schema); nothing is fetched."""
    schema_file = user_dir / "custom.thing.json"
    schema_file.write_text(json.dumps({"$schema": DRAFT, "type": "object"}))
    env = {"POET_SCHEMA_PATH": str(user_dir)}
    router = EventRouter(config=load_config(spool=spool, env=env))
    eid = router.emit("custom.thing", {"n": 1})
    schema_file.write_text(json.dumps(_with_ref(server.url("s.json"))))

    r = run_cli("--spool", spool, "daemon", "--once", env=env)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # something was quarantined
    reasons = [json.loads(p.read_bytes()) for p in (spool / "events" / "corrupt").glob("*.reason")]
    assert [(x["name"], x["reason"]) for x in reasons] == [(f"{eid}.json", "bad_schema")]
    assert repr(server.url("s.json")) in reasons[0]["detail"]
    assert server.connections == 0
    assert fifo.opens == 0


ALLOWED: dict[str, Callable[[Server], dict[str, Any]]] = {
    "pointer": lambda s: {
        "$schema": DRAFT,
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/num"}},
        "$defs": {"num": {"type": "integer"}},
    },
    "anchor": lambda s: {
        "$schema": DRAFT,
        "type": "object",
        "properties": {"n": {"$ref": "#num"}},
        "$defs": {"num": {"$anchor": "num", "type": "integer"}},
    },
    "own-http-id": lambda s: {
        "$schema": DRAFT,
        "$id": s.url("custom.thing.json"),
        "type": "object",
        "properties": {"n": {"$ref": s.url("custom.thing.json#/$defs/num")}},
        "$defs": {"num": {"type": "integer"}},
    },
    "relative-to-own-id": lambda s: {
        "$schema": DRAFT,
        "$id": s.url("dir/custom.thing.json"),
        "type": "object",
        "properties": {"n": {"$ref": "custom.thing.json#/$defs/num"}},
        "$defs": {"num": {"type": "integer"}},
    },
    "embedded-id": lambda s: {
        "$schema": DRAFT,
        "type": "object",
        "properties": {"n": {"$ref": s.url("embedded.json")}},
        "$defs": {"num": {"$id": s.url("embedded.json"), "type": "integer"}},
    },
    "draft-07": lambda s: {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"n": {"$ref": "#/definitions/num"}},
        "definitions": {"num": {"type": "integer"}},
    },
}


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_references_inside_the_schema_work_without_fetching(
    case: str, server: Server, user_dir: Path, spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """A $ref to a pointer, anchor or $id inside the schema file is resolved locally: valid passes, invalid is 65."""
    (user_dir / "custom.thing.json").write_text(json.dumps(ALLOWED[case](server)))
    env = {"POET_SCHEMA_PATH": str(user_dir)}
    (tmp_path / "good.json").write_text(json.dumps({"n": 1}))
    (tmp_path / "bad.json").write_text(json.dumps({"n": "one"}))
    r = run_cli("--spool", spool, "emit", "custom.thing", tmp_path / "good.json", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("--spool", spool, "emit", "custom.thing", tmp_path / "bad.json", env=env)
    assert r.returncode == EX_DATAERR, r.stderr
    assert "$.payload.n" in r.stderr and "integer" in r.stderr, r.stderr
    assert server.connections == 0


# -- patterns ------------------------------------------------------------------------------------

EVIL = "^(a+)+$"
VICTIM = "a" * 40 + "!"  # hours of backtracking for Python's re; microseconds for a linear engine

# name -> (schema, payload, JSON path named in the error)
PATTERN_CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "pattern": (
        {"type": "object", "properties": {"name": {"type": "string", "pattern": EVIL}}},
        {"name": VICTIM},
        "$.payload.name",
    ),
    "pattern-in-array": (
        {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "pattern": EVIL}}}},
        {"tags": ["aaa", VICTIM]},
        "$.payload.tags[1]",
    ),
    "patternProperties-with-additionalProperties": (
        {
            "type": "object",
            "properties": {
                "m": {"type": "object", "patternProperties": {EVIL: {"type": "integer"}}, "additionalProperties": False}
            },
        },
        {"m": {VICTIM: 1}},
        "$.payload.m",
    ),
    "patternProperties-with-unevaluatedProperties": (
        {
            "type": "object",
            "properties": {
                "m": {
                    "type": "object",
                    "patternProperties": {EVIL: {"type": "integer"}},
                    "unevaluatedProperties": False,
                }
            },
        },
        {"m": {VICTIM: 1}},
        "$.payload.m",
    ),
    "propertyNames": (
        {"type": "object", "properties": {"m": {"type": "object", "propertyNames": {"pattern": EVIL}}}},
        {"m": {VICTIM: 1}},
        "$.payload.m",
    ),
    "format-regex-beside-pattern": (
        {"type": "object", "properties": {"r": {"type": "string", "format": "regex", "pattern": EVIL}}},
        {"r": VICTIM},
        "$.payload.r",
    ),
}


@pytest.mark.parametrize("case", sorted(PATTERN_CASES))
def test_catastrophic_pattern_fails_promptly_with_65(
    case: str, user_dir: Path, spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """emit and validate refuse a payload a backtracking engine would chew on for hours: exit 65 naming the path."""
    schema, payload, path = PATTERN_CASES[case]
    (user_dir / "custom.thing.json").write_text(json.dumps({"$schema": DRAFT, **schema}))
    (tmp_path / "p.json").write_text(json.dumps(payload))
    env = {"POET_SCHEMA_PATH": str(user_dir)}
    # run_cli's timeout (CLI_TIMEOUT) is only the hang guard: a hang fails the test as TimeoutExpired.
    r = run_cli("--spool", spool, "emit", "custom.thing", tmp_path / "p.json", env=env)
    assert r.returncode == EX_DATAERR, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{path}:" in r.stderr, r.stderr
    assert files_in(spool / "events" / "pending") == []
    r = run_cli("validate", "--type", "custom.thing", tmp_path / "p.json", env=env)
    assert r.returncode == EX_DATAERR, r.stdout + r.stderr
    assert f"{path}:" in r.stdout + r.stderr


def test_daemon_quarantines_a_catastrophic_payload_promptly(user_dir: Path, spool: Path, run_cli: Any) -> None:
    """An event on disk whose payload meets a catastrophic pattern is quarantined as bad_schema, not chewed on."""
    schema_file = user_dir / "custom.thing.json"
    schema_file.write_text(json.dumps({"$schema": DRAFT, "type": "object"}))
    env = {"POET_SCHEMA_PATH": str(user_dir)}
    eid = EventRouter(config=load_config(spool=spool, env=env)).emit("custom.thing", {"name": VICTIM})
    schema, _, _ = PATTERN_CASES["pattern"]
    schema_file.write_text(json.dumps({"$schema": DRAFT, **schema}))
    r = run_cli("--spool", spool, "daemon", "--once", env=env)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr
    reasons = [json.loads(p.read_bytes()) for p in (spool / "events" / "corrupt").glob("*.reason")]
    assert [(x["name"], x["reason"]) for x in reasons] == [(f"{eid}.json", "bad_schema")]
    assert "$.payload.name" in reasons[0]["detail"]


@pytest.mark.parametrize("pattern", ["(?=a)b", "(a)\\1", "(?<!x)y"])
def test_backtracking_only_pattern_is_refused_when_loaded(
    pattern: str, user_dir: Path, spool: Path, tmp_path: Path, run_cli: Any
) -> None:
    """A pattern needing a backtracking engine (lookaround, backreference) makes the schema invalid: 65, one line."""
    schema_file = user_dir / "custom.thing.json"
    schema_file.write_text(json.dumps({"$schema": DRAFT, "properties": {"s": {"type": "string", "pattern": pattern}}}))
    (tmp_path / "p.json").write_text(json.dumps({"s": "b"}))
    r = run_cli("--spool", spool, "emit", "custom.thing", tmp_path / "p.json", env={"POET_SCHEMA_PATH": str(user_dir)})
    assert r.returncode == EX_DATAERR, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(schema_file) in lines[0] and "invalid JSON Schema" in lines[0], r.stderr


def test_listing_and_showing_a_refused_schema_still_work(server: Server, user_dir: Path, run_cli: Any) -> None:
    """`schemas` and `schemas show` read a schema with an outside $ref without following it."""
    schema = _with_ref(server.url("s.json"))
    (user_dir / "custom.thing.json").write_text(json.dumps(schema))
    env = {"POET_SCHEMA_PATH": str(user_dir)}
    r = run_cli("schemas", "-o", "jsonl", env=env)
    assert r.returncode == 0, r.stderr
    assert "custom.thing" in r.stdout
    r = run_cli("schemas", "show", "custom.thing", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == schema
    assert server.connections == 0
