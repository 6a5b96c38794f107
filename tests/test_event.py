"""Event ids, canonical checksums, guarded JSON parsing and topic routing."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from poetctl import EventRouter
from poetctl.errors import InvalidData, UsageError
from poetctl.event import MAX_DEPTH, compute_checksum, parse_json, verify_checksum
from poetctl.ids import uuid7
from poetctl.topics import matches, to_subject, topic_for, validate_pattern

# -- uuid7 ----------------------------------------------------------------------


def test_uuid7_unique_and_strictly_increasing() -> None:
    """10,000 ids from one process are unique and strictly increasing as strings."""
    ids = [uuid7() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_uuid7_layout() -> None:
    """A uuid7 is 36 lowercase hex-and-dash characters with version nibble 7 and RFC variant."""
    for _ in range(1000):
        u = uuid7()
        assert len(u) == 36
        assert [len(p) for p in u.split("-")] == [8, 4, 4, 4, 12]
        assert u == u.lower()
        int(u.replace("-", ""), 16)
        assert u[14] == "7"
        assert u[19] in "89ab"


def test_uuid7_string_is_the_rfc_9562_layout_of_its_fields() -> None:
    """The formatted id is the 128-bit value ms|7|rand_a|10|rand_b in hex, edge values and changing ms included."""
    from poetctl.ids import _format7

    def reference(ms: int, rand_a: int, rand_b: int) -> str:
        return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))

    edges = [(0, 0, 0), ((1 << 48) - 1, 0xFFF, (1 << 62) - 1), (1 << 47, 1, 1 << 61), (0xABCDEF123456, 0x5A, 0x12345)]
    for ms, a, b in edges + [(ms + 1, a, b) for ms, a, b in edges[:1]] + edges[:1]:
        assert _format7(ms, a, b) == reference(ms, a, b)


def test_uuid7_embeds_current_time() -> None:
    """The first 48 bits of a uuid7 are the Unix time in milliseconds."""
    import time

    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    ms = int(u.replace("-", "")[:12], 16)
    # the counter may carry into the next millisecond under load, hence +1 slack
    assert before <= ms <= after + 1


def test_uuid7_forked_child_differs_from_parent() -> None:
    """Ids generated in a forked child never repeat the parent's."""
    parent_before = [uuid7() for _ in range(1000)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            data = "\n".join(uuid7() for _ in range(2000)).encode()
            with os.fdopen(w, "wb") as fh:
                fh.write(data)
        finally:
            os._exit(0)
    os.close(w)
    parent_after = [uuid7() for _ in range(2000)]
    with os.fdopen(r, "rb") as fh:
        child = fh.read().decode().split("\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 2000
    assert len(set(child)) == 2000
    assert set(child).isdisjoint(parent_before)
    assert set(child).isdisjoint(parent_after)


# -- checksum -------------------------------------------------------------------


@pytest.fixture
def envelope(router: EventRouter, samples: dict[str, Any]) -> dict[str, Any]:
    """A sealed drift.detected envelope as a dict."""
    ev, _ = router.build("drift.detected", samples["drift.detected"]["valid"][0], correlation_id="drift-alert-123")
    return ev.to_dict()


def test_checksum_ignores_key_order_and_whitespace(envelope: dict[str, Any]) -> None:
    """Re-dumping an envelope with other key order and indentation keeps its checksum."""
    stated = envelope["checksum"]
    assert stated.startswith("sha256:") and len(stated) == len("sha256:") + 64

    def reorder(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: reorder(x[k]) for k in reversed(list(x))}
        if isinstance(x, list):
            return [reorder(v) for v in x]
        return x

    text = json.dumps(reorder(envelope), indent=4)
    assert "\n    " in text
    reparsed = json.loads(text)
    assert list(reparsed) != list(envelope)
    assert compute_checksum(reparsed) == stated
    verify_checksum(reparsed)


def _leaf_paths(x: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _leaf_paths(v, (*path, k))]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _leaf_paths(v, (*path, i))]
    return [path]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if value is None:
        return 0
    return str(value) + "x"


def test_checksum_changes_with_any_payload_value(envelope: dict[str, Any]) -> None:
    """Changing any single payload value changes the checksum."""
    stated = envelope["checksum"]
    leaves = _leaf_paths(envelope["payload"])
    assert len(leaves) >= 8
    for path in leaves:
        d = json.loads(json.dumps(envelope))
        node = d["payload"]
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = _changed(node[path[-1]])
        assert compute_checksum(d) != stated, path


def test_checksum_changes_with_envelope_fields(envelope: dict[str, Any]) -> None:
    """Changing an envelope field (topic, correlation_id, metadata) changes the checksum."""
    stated = envelope["checksum"]
    for key, value in (
        ("topic", "poet/system/health"),
        ("correlation_id", "other"),
        ("source", "x"),
    ):
        d = dict(envelope, **{key: value})
        assert compute_checksum(d) != stated, key
    d = json.loads(json.dumps(envelope))
    d["metadata"]["environment"] = "prod-2"
    assert compute_checksum(d) != stated


def test_verify_checksum_reports_mismatch(envelope: dict[str, Any]) -> None:
    """verify_checksum raises InvalidData naming 'checksum mismatch' for tampered content."""
    verify_checksum(envelope)
    tampered = json.loads(json.dumps(envelope))
    tampered["payload"]["drift_score"] = 0.1
    with pytest.raises(InvalidData) as info:
        verify_checksum(tampered, where="f.json")
    assert "checksum mismatch" in str(info.value)
    assert str(info.value).startswith("f.json")


def test_verify_checksum_reports_missing_checksum(envelope: dict[str, Any]) -> None:
    """verify_checksum raises InvalidData saying the checksum is missing and its expected form."""
    d = dict(envelope)
    del d["checksum"]
    with pytest.raises(InvalidData) as info:
        verify_checksum(d)
    assert "missing checksum" in str(info.value)
    assert "sha256:" in str(info.value)


# -- parse_json -----------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1,', "invalid JSON"),
        (b"", "invalid JSON"),
        (b"\xff", "UTF-8"),
        (b'{"a": "\xc3\x28"}', "UTF-8"),
        (_nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
        (_nested(200), f"nested deeper than {MAX_DEPTH}"),
        (_nested(5000), f"nested deeper than {MAX_DEPTH}"),
    ],
    ids=[
        "truncated",
        "empty",
        "bare-ff",
        "bad-utf8-in-string",
        "depth-65",
        "depth-200",
        "depth-5000",
    ],
)
def test_parse_json_refuses_bad_input(data: bytes, expected: str) -> None:
    """parse_json raises InvalidData naming where and what was expected (JSON, UTF-8, depth)."""
    with pytest.raises(InvalidData) as info:
        parse_json(data, where="in.json")
    msg = str(info.value)
    assert msg.startswith("in.json: ")
    assert expected in msg


def test_parse_json_accepts_max_depth() -> None:
    """Nesting exactly MAX_DEPTH (64) levels deep is accepted."""
    obj = parse_json(_nested(MAX_DEPTH))
    depth = 0
    while isinstance(obj, list):
        depth += 1
        obj = obj[0] if obj else None
    assert depth == MAX_DEPTH


def test_parse_json_refuses_oversize_input() -> None:
    """Input longer than max_bytes raises InvalidData naming the limit."""
    data = json.dumps({"a": "x" * 2000}).encode()
    with pytest.raises(InvalidData) as info:
        parse_json(data, where="big.json", max_bytes=1000)
    msg = str(info.value)
    assert msg.startswith("big.json: ")
    assert "1000 bytes" in msg
    assert "max_event_bytes" in msg
    assert parse_json(data, max_bytes=len(data)) == {"a": "x" * 2000}


# -- topics -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "payload", "topic"),
    [
        (
            "function.execution",
            {"function_name": "detect_drift"},
            "poet/functions/detect_drift/execution",
        ),
        (
            "function.feedback",
            {"function_name": "detect_drift"},
            "poet/functions/detect_drift/feedback",
        ),
        (
            "function.update",
            {"function_name": "detect_drift"},
            "poet/functions/detect_drift/updates",
        ),
        ("drift.detected", {"function_name": "f1"}, "poet/functions/f1/execution"),
        ("feedback.human_validation", {"function_name": "detect_drift"}, "poet/feedback/pending"),
        ("system.health", {}, "poet/system/health"),
        ("system.metrics", {}, "poet/system/metrics"),
        ("enhancement.regeneration_needed", {"function_name": None}, "poet/functions/system"),
        ("enhancement.regeneration_needed", {"function_name": "g"}, "poet/functions/g/updates"),
        ("learning.pattern_detected", {}, "poet/functions/system"),
        ("function.execution", {"function_name": "../etc"}, "poet/functions/system"),
    ],
)
def test_routing_table(event_type: str, payload: dict[str, Any], topic: str) -> None:
    """The routing table maps type and payload to the seed's topic tree."""
    assert topic_for(event_type, payload) == topic


def test_router_stamps_routed_topic(router: EventRouter, samples: dict[str, Any], spool: Path) -> None:
    """An emitted function.execution event carries poet/functions/<fn>/execution on disk."""
    payload = dict(samples["function.execution"]["valid"][0], function_name="detect_drift")
    eid = router.emit("function.execution", payload)
    obj = json.loads((spool / "events" / "pending" / f"{eid}.json").read_bytes())
    assert obj["topic"] == "poet/functions/detect_drift/execution"


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("poet/functions/*", "poet/functions/x/execution", True),
        ("poet/functions/*", "poet/functions/system", True),
        ("poet/functions/*", "poet/feedback/pending", False),
        ("poet/functions/*", "poet/functions", False),
        ("**", "poet/functions/x/execution", True),
        ("**", "poet/feedback/pending", True),
        ("**", "poet", True),
        ("poet/**/execution", "poet/functions/x/execution", True),
        ("poet/**/execution", "poet/execution", True),
        ("poet/**/execution", "poet/functions/x/updates", False),
        ("poet/system/health", "poet/system/health", True),
        ("poet/system/health", "poet/system/metrics", False),
        ("poet/system", "poet/system/health", True),
        ("poet/sys", "poet/system/health", False),
    ],
)
def test_topic_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    """'*' is one segment, '**' any number, and a pattern matches the topics below it."""
    assert matches(pattern, topic) is expected


def test_to_subject() -> None:
    """Topics and patterns map 1:1 to NATS subjects ('/'->'.', '**'->'>')."""
    assert to_subject("poet/functions/*") == "poet.functions.*"
    assert to_subject("poet/**") == "poet.>"
    assert to_subject("poet/functions/detect_drift/execution") == "poet.functions.detect_drift.execution"


@pytest.mark.parametrize("pattern", ["poet/../x", "a b", "poet/.hidden", "", "poet/a*b"])
def test_validate_pattern_rejects_bad_patterns(pattern: str) -> None:
    """validate_pattern raises UsageError for '..', spaces, hidden and empty segments."""
    with pytest.raises(UsageError) as info:
        validate_pattern(pattern)
    assert "pattern" in str(info.value)


def test_validate_pattern_normalises() -> None:
    """validate_pattern strips leading/trailing '/' and keeps wildcards."""
    assert validate_pattern("/poet/functions/*/") == "poet/functions/*"
    assert validate_pattern("poet/**") == "poet/**"
